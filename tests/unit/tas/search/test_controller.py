"""The search controller's step on a real database file and a real Optuna storage, with a fake
worker that writes a trial job's epoch rows and outcome straight into the store. Faults are
injected where a process can die: between Optuna's ask and the job's commit, in the middle of
an ask, between a prune and the job's cancel, and when another process takes the lease."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.schemas.searches import SearchIn
from app.services import searches as search_service
from tas.core.spec import JobSpec
from tas.search import study as study_mod
from tas.search.controller import DISCARDED, Controller, Step
from tas.settings import Settings
from tas.store import registry as registry_store
from tas.store import searches as search_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.orm import Job, JobStatus, MetricRow, ModelVersion, Search, utcnow
from tas.store.searches import LeaseLost
from tas.store.unit_of_work import unit_of_work
from tests.helpers.api import migrated_settings

OWNER = "controller-a"


def accuracy(params: dict[str, Any], epoch: int) -> float:
    """A made-up learning curve: best near lr 0.01, rising with the epochs."""
    lr = float(params.get("training.lr", 0.01))
    return round(0.9 - abs(math.log10(lr) + 2) / 10 + 0.01 * epoch, 6)


@dataclass
class World:
    settings: Settings
    sessions: sessionmaker[Session]
    storage_url: str
    published: list[tuple[str, str]] = field(default_factory=list)
    owner: str = OWNER
    submit: Callable[[Session, JobSpec, str], Job] | None = None

    def controller(self, owner: str | None = None) -> Controller:
        base = search_service.submitter(self.settings)
        return Controller(
            sessions=self.sessions,
            storage=study_mod.open_storage(self.storage_url),
            submit=self.submit or base,
            publish=lambda job_id, queue: self.published.append((job_id, queue)),
            owner=owner or self.owner,
            lease_s=30,
            max_active_jobs=self.settings.max_active_jobs_per_tenant,
        )

    def create(self, **overrides: Any) -> str:
        body: dict[str, Any] = {
            "name": "s",
            "spec": {
                "dataset": {"name": "digits"},
                "model": {"arch": "mlp", "hidden": [8]},
                "training": {"epochs": 4},
            },
            "space": {"training.lr": {"type": "float", "low": 0.0001, "high": 1.0, "log": True}},
            "objective": {"metric": "val_accuracy"},
            "sampler": {"type": "random", "seed": 3},
            "max_trials": 4,
            "max_concurrent": 2,
            **overrides,
        }
        with unit_of_work(self.sessions) as s:
            search = search_service.create(
                s, SearchIn.model_validate(body), tenant="default", settings=self.settings
            )
            return search.id

    def step(self, search_id: str, owner: str | None = None) -> Step:
        owner = owner or self.owner
        with unit_of_work(self.sessions) as s:
            assert search_store.take_lease(s, search_id, owner, 30)
        return self.controller(owner).advance(search_id)

    def jobs(self, search_id: str) -> list[Job]:
        with self.sessions() as s:
            q = select(Job).where(Job.search_id == search_id).order_by(Job.trial_number)
            return list(s.scalars(q))

    def search(self, search_id: str) -> dict[str, Any]:
        with self.sessions() as s:
            row = s.get(Search, search_id)
            assert row is not None
            return search_service.view(s, row)

    def train(self, job: Job, epochs: int, *, finish: str | None = "succeeded") -> None:
        """The fake worker: epoch rows 1..epochs of the job's made-up curve, then its outcome
        (a succeeded job registers its model under its own name, as the real one does)."""
        params = self.params(job)
        with unit_of_work(self.sessions) as s:
            row = s.get(Job, job.id)
            assert row is not None
            for epoch in range(1, epochs + 1):
                exists = s.scalar(
                    select(MetricRow.id).where(
                        MetricRow.job_id == job.id, MetricRow.epoch == epoch, MetricRow.step == -1
                    )
                )
                if exists is None:
                    value = accuracy(params, epoch)
                    s.add(
                        MetricRow(
                            job_id=job.id, epoch=epoch, step=-1, values={"val_accuracy": value}
                        )
                    )
            row.status = finish or JobStatus.running.value
            if finish is not None:
                row.finished_at = utcnow()
            if finish == JobStatus.succeeded.value:
                mv = registry_store.register_model(s, row, f"/models/{job.id}", {}, None)
                row.result = {"model": {"name": mv.name, "version": mv.version}}

    def params(self, job: Job) -> dict[str, Any]:
        with self.sessions() as s:
            found = [
                t.params for t in search_store.trials(s, job.search_id or "") if t.job_id == job.id
            ]
        return found[0]

    def drive(self, search_id: str, epochs: int = 4, limit: int = 50) -> dict[str, Any]:
        """Step the search, training every job it starts to the end, until it settles."""
        for _ in range(limit):
            self.step(search_id)
            for job in self.jobs(search_id):
                if job.status in (JobStatus.queued.value, JobStatus.running.value):
                    self.train(job, epochs)
            if self.search(search_id)["status"] in ("succeeded", "failed", "cancelled"):
                return self.search(search_id)
        raise AssertionError(f"search {search_id} did not finish: {self.search(search_id)}")

    def study(self, search_id: str) -> optuna.Study:
        return optuna.load_study(
            study_name=f"tas-search-{search_id}",
            storage=study_mod.open_storage(self.storage_url),
        )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    settings = migrated_settings(tmp_path)
    engine = make_engine(settings.resolved_database_url)
    yield World(settings, make_sessionmaker(engine), f"sqlite:///{tmp_path / 'optuna.db'}")
    engine.dispose()


def lrs(search: dict[str, Any]) -> list[tuple[int, float]]:
    return [(t["number"], t["params"]["training.lr"]) for t in search["trials"]]


def test_a_search_runs_max_trials_tells_each_and_registers_the_best(world: World) -> None:
    search_id = world.create(model_name="best")
    first = world.step(search_id)
    assert first.started == [0, 1]  # max_concurrent
    assert [job_id for job_id, _ in world.published] == [j.id for j in world.jobs(search_id)]
    done = world.drive(search_id)
    assert done["status"] == "succeeded"
    assert [t["state"] for t in done["trials"]] == ["complete"] * 4
    assert all(t["epochs"] == 4 and len(t["intermediate"]) == 4 for t in done["trials"])
    values = [t["value"] for t in done["trials"]]
    assert done["best"]["value"] == max(values)
    assert [t.number for t in world.study(search_id).trials] == [0, 1, 2, 3]
    # The best trial's version moved under model_name; its job's result says so.
    best_job = done["best"]["job_id"]
    with world.sessions() as s:
        mv = s.scalar(select(ModelVersion).where(ModelVersion.job_id == best_job))
        assert mv is not None and (mv.name, mv.version) == ("best", 1)
        job = s.get(Job, best_job)
        assert job is not None and job.result["model"] == {"name": "best", "version": 1}
    assert done["model"] == {"name": "best", "version": 1}
    assert done["importances"] == {"training.lr": 1.0}


def test_a_crash_between_ask_and_commit_leaves_an_orphan_that_gets_its_job(world: World) -> None:
    reference = world.drive(world.create(name="ref"))

    search_id = world.create(name="victim")
    calls = {"n": 0}
    real = search_service.submitter(world.settings)

    def crashing(s: Session, spec: JobSpec, tenant: str) -> Job:
        calls["n"] += 1
        if calls["n"] == 2:  # trial 1 was asked; the process dies before its job commits
            raise RuntimeError("killed")
        return real(s, spec, tenant)

    world.submit = crashing
    with pytest.raises(RuntimeError):
        world.step(search_id)
    study = world.study(search_id)
    assert [(t.number, t.state.name) for t in study.trials] == [(0, "RUNNING"), (1, "RUNNING")]
    assert [j.trial_number for j in world.jobs(search_id)] == [0]  # trial 1 has no job

    world.submit = None  # restarted
    step = world.step(search_id)
    assert step.started == [1]  # the orphan got its job; nothing new was asked
    assert len(world.study(search_id).trials) == 2
    done = world.drive(search_id)
    assert done["status"] == "succeeded"
    assert [t.number for t in world.study(search_id).trials] == [0, 1, 2, 3]
    assert [j.trial_number for j in world.jobs(search_id)] == [0, 1, 2, 3]
    assert lrs(done) == lrs(reference)  # the same draws as a run that never crashed
    assert done["best"]["number"] == reference["best"]["number"]


def test_a_crash_in_the_middle_of_an_ask_completes_the_trial_s_draws(world: World) -> None:
    space = {
        "training.lr": {"type": "float", "low": 0.0001, "high": 1.0, "log": True},
        "training.batch_size": {"type": "int", "low": 16, "high": 128, "step": 16},
    }
    reference = world.drive(world.create(name="ref", space=space))
    search_id = world.create(name="victim", space=space)
    # The process died after Optuna created trial 0 and drew one of its two parameters.
    with world.sessions() as s:
        row = s.get(Search, search_id)
        assert row is not None
        sampler = study_mod.make_sampler(row.sampler, row.seed, {})
    optuna.create_study(
        storage=study_mod.open_storage(world.storage_url),
        study_name=f"tas-search-{search_id}",
        direction="maximize",
    )
    study = optuna.load_study(
        study_name=f"tas-search-{search_id}",
        storage=study_mod.open_storage(world.storage_url),
        sampler=sampler,
    )
    trial = study.ask()
    trial.suggest_float("training.lr", 0.0001, 1.0, log=True)
    assert list(study.trials[0].params) == ["training.lr"]

    done = world.drive(search_id)
    assert done["status"] == "succeeded"
    assert [t["params"] for t in done["trials"]] == [t["params"] for t in reference["trials"]]
    assert [t.number for t in world.study(search_id).trials] == [0, 1, 2, 3]


def test_an_orphan_past_max_trials_is_discarded_not_counted(world: World) -> None:
    search_id = world.create(max_trials=2)
    world.step(search_id)
    assert [j.trial_number for j in world.jobs(search_id)] == [0, 1]
    # Another controller (its lease expired mid-step) asked one more before being fenced out.
    world.study(search_id).ask()
    step = world.step(search_id)
    assert step.discarded == [2] and step.started == []
    extra = world.study(search_id).trials[2]
    assert extra.state.name == "FAIL" and extra.system_attrs[DISCARDED] is True
    done = world.drive(search_id)
    assert done["status"] == "succeeded"
    assert [t["number"] for t in done["trials"]] == [0, 1]
    assert [j.trial_number for j in world.jobs(search_id)] == [0, 1]


def test_a_pruned_trial_whose_job_still_runs_is_cancelled_on_the_next_step(world: World) -> None:
    search_id = world.create(
        pruner={"type": "median", "startup_trials": 1},
        max_concurrent=1,
        sampler={"type": "grid", "seed": 1},  # lr 0.01 (the better) first
        space={"training.lr": {"type": "categorical", "choices": [0.01, 0.0001]}},
        max_trials=2,
    )
    world.step(search_id)
    world.train(world.jobs(search_id)[0], 4)
    world.step(search_id)
    second = world.jobs(search_id)[1]
    world.train(second, 1, finish=None)
    # The process dies after telling Optuna PRUNED, before cancelling the job.
    world.study(search_id).tell(1, state=optuna.trial.TrialState.PRUNED)
    step = world.step(search_id)
    assert step.cancelled_jobs == [second.id]
    with world.sessions() as s:
        job = s.get(Job, second.id)
        assert job is not None and job.cancel_requested and job.status == "running"
    assert world.search(search_id)["trials"][1]["state"] == "pruned"
    assert world.step(search_id).cancelled_jobs == []  # asked once


def test_the_median_pruner_stops_a_trial_worse_than_the_completed_ones(world: World) -> None:
    search_id = world.create(
        pruner={"type": "median", "startup_trials": 1},
        max_concurrent=1,
        sampler={"type": "grid", "seed": 1},  # lr 0.01 (the better) first
        space={"training.lr": {"type": "categorical", "choices": [0.01, 0.0001]}},
        max_trials=2,
    )
    world.step(search_id)
    first = world.jobs(search_id)[0]
    assert world.params(first)["training.lr"] == 0.01
    world.train(first, 4)
    world.step(search_id)
    second = world.jobs(search_id)[1]
    world.train(second, 2, finish=None)  # still running, worse at epochs 1 and 2
    step = world.step(search_id)
    assert step.told == {1: "pruned"} and step.cancelled_jobs == [second.id]
    trial = world.search(search_id)["trials"][1]
    assert trial["state"] == "pruned" and trial["epochs"] == 2
    world.train(second, 2, finish="cancelled")  # the worker stops it
    done = world.drive(search_id)
    assert done["status"] == "succeeded" and done["counts"]["pruned"] == 1


def test_a_step_after_the_lease_was_taken_over_writes_nothing(world: World) -> None:
    search_id = world.create()
    with unit_of_work(world.sessions) as s:
        assert search_store.take_lease(s, search_id, OWNER, 30)
    ctl = world.controller(OWNER)
    # The lease expires and another process takes the search.
    with unit_of_work(world.sessions) as s:
        s.execute(update(Search).where(Search.id == search_id).values(lease_until=utcnow()))
    with unit_of_work(world.sessions) as s:
        assert search_store.take_lease(s, search_id, "controller-b", 30)
    with pytest.raises(LeaseLost):
        ctl.advance(search_id)
    assert world.jobs(search_id) == []
    # The new owner goes on: the trial the fenced step asked is its orphan, given a job.
    step = world.step(search_id, owner="controller-b")
    assert step.started == [0, 1]
    assert len(world.study(search_id).trials) == 2


def test_failed_jobs_are_told_failed_and_a_search_with_none_complete_fails(world: World) -> None:
    search_id = world.create(max_trials=2)
    while world.search(search_id)["status"] in ("queued", "running"):
        world.step(search_id)
        for job in world.jobs(search_id):
            if job.status in ("queued", "running"):
                world.train(job, 1, finish="failed")
    done = world.search(search_id)
    assert done["status"] == "failed"
    assert done["error"]["type"] == "NoTrialCompleted"
    assert [t["state"] for t in done["trials"]] == ["failed", "failed"]
    assert [t.state.name for t in world.study(search_id).trials] == ["FAIL", "FAIL"]


def test_a_tenant_at_its_job_limit_makes_the_search_wait(world: World) -> None:
    world.settings = world.settings.model_copy(update={"max_active_jobs_per_tenant": 1})
    search_id = world.create(max_concurrent=3)
    step = world.step(search_id)
    assert step.started == [0]
    assert step.waiting_for is not None and "TAS_MAX_ACTIVE_JOBS_PER_TENANT" in step.waiting_for
    assert world.search(search_id)["waiting_for"] == step.waiting_for
    assert len(world.study(search_id).trials) == 1  # nothing asked while it waits
    world.train(world.jobs(search_id)[0], 4)
    step = world.step(search_id)
    assert step.started == [1]


def test_a_cancelled_search_tells_optuna_and_settles(world: World) -> None:
    search_id = world.create()
    world.step(search_id)
    jobs = world.jobs(search_id)
    world.train(jobs[0], 1, finish=None)
    with unit_of_work(world.sessions) as s:
        row = s.get(Search, search_id)
        assert row is not None
        search_service.cancel(s, row)
    with world.sessions() as s:
        statuses = [s.get(Job, j.id).status for j in jobs]  # type: ignore[union-attr]
        cancel = [s.get(Job, j.id).cancel_requested for j in jobs]  # type: ignore[union-attr]
    assert statuses == ["running", "cancelled"] and cancel == [True, True]
    step = world.step(search_id)
    assert step.finished == "cancelled" and step.started == []
    done = world.search(search_id)
    assert done["status"] == "cancelled"
    assert [t["state"] for t in done["trials"]] == ["failed", "failed"]
    assert [t.state.name for t in world.study(search_id).trials] == ["FAIL", "FAIL"]
    with world.sessions() as s:
        assert search_store.unsettled(s) == []

"""A search survives the death of any process: kill -9 the worker mid-trial and kill -9 the API
process that drives the controller, and the search still completes with exactly max_trials
trials, none counted twice, with the parameters, values and best trial of a run that was never
interrupted (seeded random sampler, seeded training: deterministic on the CPU)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from tas.proc import descendants
from tas.search.study import storage_url
from tas.settings import Settings
from tests.helpers import searches
from tests.helpers.servers import PostgresServer, RedisServer, free_port
from tests.helpers.stack import Proc, Stack, base_env, spawn, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST = {
    "TAS_LEASE_SECONDS": "3",
    "TAS_HEARTBEAT_SECONDS": "0.5",
    "TAS_REAPER_INTERVAL_S": "1",
    "TAS_REQUEUE_AFTER_S": "3",
    "TAS_SEARCH_INTERVAL_S": "0.25",
    "TAS_SEARCH_LEASE_S": "4",
}

TRIALS = 4


def body(name: str) -> dict[str, Any]:
    return searches.search_body(
        name,
        spec=searches.digits_base(epochs=30, batch_size=16),
        space={
            "training.lr": {"type": "float", "low": 0.001, "high": 0.05, "log": True},
            "model.hidden": {"type": "categorical", "choices": [[32], [64]]},
        },
        sampler={"type": "random", "seed": 21},
        max_trials=TRIALS,
        max_concurrent=2,
        model_name=f"{name}-best",
    )


def kill_tree(proc: Proc) -> None:
    """SIGKILL a process and everything below it (an embedded worker and its pool children are
    in a group of their own): a machine lost, nothing stopping cleanly."""
    pids = [proc.popen.pid, *descendants(proc.popen.pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.popen.wait()


class Deployment:
    """tas on one stack, whose API and worker the test kills and starts again: on the embedded
    stack both are `tas serve` (the API and its worker die together); on Redis + PostgreSQL the
    API (`tas serve --no-worker`) and `tas worker` die apart."""

    def __init__(self, kind: str, tmp: Path, env: dict[str, str]) -> None:
        self.kind, self.tmp = kind, tmp
        self.port = free_port()
        self.stack = Stack(kind, f"http://127.0.0.1:{self.port}", env, tmp / "var", tmp)
        self.starts = 0
        self.api: Proc | None = None
        self.worker: Proc | None = None

    def start_api(self) -> None:
        self.starts += 1
        args = ["serve", "--port", str(self.port)]
        if self.kind != "embedded":
            args.append("--no-worker")
        self.api = spawn(f"api{self.starts}", args, self.stack.env, self.tmp)
        self.stack.procs.append(self.api)
        wait_http(self.stack, self.api)

    def start_worker(self) -> None:
        if self.kind == "embedded":
            return
        self.starts += 1
        self.worker = self.stack.start_worker(f"worker{self.starts}")

    def kill_worker(self) -> None:
        """The machine that trains dies: on the embedded stack, the whole `tas serve`."""
        if self.kind == "embedded":
            self.kill_api()
            self.start_api()
            return
        assert self.worker is not None
        kill_tree(self.worker)
        self.start_worker()

    def kill_api(self, restart: bool = False) -> None:
        assert self.api is not None
        kill_tree(self.api)
        if restart:
            self.start_api()


@pytest.fixture(params=["embedded", "redis_pg"])
def deploy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    extra = dict(FAST)
    if request.param == "redis_pg":
        redis: RedisServer = request.getfixturevalue("redis_server")
        request.getfixturevalue("redis_url")  # emptied for this test
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        extra.update(TAS_DATABASE_URL=pg.create_database(), TAS_BROKER_URL=redis.url)
        import subprocess
        import sys

        subprocess.run(
            [sys.executable, "-m", "tas", "migrate"],
            env=base_env(tmp_path / "var", **extra),
            check=True,
            capture_output=True,
            timeout=120,
        )
    d = Deployment(request.param, tmp_path, base_env(tmp_path / "var", **extra))
    try:
        d.start_api()
        d.start_worker()
        yield d
    finally:
        d.stack.close()


def running_trial_past(
    stack: Stack, search_id: str, epoch: int
) -> Callable[[dict[str, Any]], bool]:
    """A `searches.wait` predicate: one of the search's jobs is running past `epoch`."""

    def check(_search: dict[str, Any]) -> bool:
        for job in searches.trial_jobs(stack, search_id):
            progress = job.get("progress") or {}
            if job["status"] == "running" and progress.get("epoch", 0) >= epoch:
                return True
        return False

    return check


def summary(search: dict[str, Any]) -> list[tuple[int, Any, str, float | None]]:
    return [(t["number"], t["params"], t["state"], t["value"]) for t in search["trials"]]


def study_trials(d: Deployment, search: dict[str, Any]) -> list[optuna.trial.FrozenTrial]:
    settings = Settings(
        data_dir=d.stack.data_dir, database_url=d.stack.env.get("TAS_DATABASE_URL") or None
    )
    study = optuna.load_study(
        study_name=f"tas-search-{search['id']}", storage=storage_url(settings)
    )
    return study.get_trials(deepcopy=False)


@pytest.mark.timeout(900)
def test_killed_worker_and_api_still_finish_the_search_as_an_uninterrupted_run(
    deploy: Deployment,
) -> None:
    st = deploy.stack
    ref = searches.wait(st, searches.create(st, body("reference"))["id"], timeout=400)
    assert ref["status"] == "succeeded", (ref, st.logs())

    victim = searches.create(st, body("victim"))
    searches.wait(st, victim["id"], predicate=running_trial_past(st, victim["id"], 2))
    deploy.kill_worker()  # mid-trial: its job resumes from its checkpoint elsewhere
    searches.wait(
        st,
        victim["id"],
        predicate=lambda s: (
            s["counts"]["complete"] >= 1 and running_trial_past(st, victim["id"], 2)(s)
        ),
    )
    deploy.kill_api()  # the controller's process, mid-search
    time.sleep(1)
    deploy.start_api()  # another process (the restarted one) takes the search over
    done = searches.wait(st, victim["id"], timeout=400)

    assert done["status"] == "succeeded", (done, st.logs())
    assert summary(done) == summary(ref)
    assert (done["best"]["number"], done["best"]["value"]) == (
        ref["best"]["number"],
        ref["best"]["value"],
    )
    jobs = searches.trial_jobs(st, victim["id"])
    assert sorted(j["trial_number"] for j in jobs) == list(range(TRIALS))  # one job per trial
    assert all(j["status"] == "succeeded" for j in jobs)
    resumed = [j for j in jobs if len(j["attempt_log"]) > 1]
    runs = [(j["trial_number"], j["attempts"], j["started_at"], j["finished_at"]) for j in jobs]
    assert resumed, f"no trial's job was interrupted: the kills came too late: {runs}"
    # Optuna counted each trial once: no trial asked twice, none discarded.
    trials = study_trials(deploy, done)
    assert [(t.number, t.state.name) for t in trials] == [(n, "COMPLETE") for n in range(TRIALS)]
    assert done["model"] == {"name": "victim-best", "version": 1}

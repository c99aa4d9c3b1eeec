"""A cancel the loop does not take within TAS_CANCEL_GRACE_S ends the run from outside the step.

The watchdog's timing alone, then the runner's wiring on a real SQLite database: a pipeline whose
"step" blocks until the test lets it go stands in for a step of minutes, and the process's exit is
a recorder (ending pytest's process would end the test). The step through the real worker and a
real slow convolution is in tests/integration/test_cancel_overrun.py."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from tas.core.errors import Stopped
from tas.core.hooks import EpochRow
from tas.core.pipeline import PipelineResult
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store import leases as lease_store
from tas.store import logs as log_store
from tas.store.orm import Checkpoint, Job, JobStage, MetricRow
from tests.helpers.api import migrated_settings
from tests.helpers.specs import iris_spec
from worker import overrun as overrun_mod
from worker import runner
from worker.joblog import JobLogBuffer
from worker.overrun import EXIT_STATUS, StopWatchdog

GRACE_S = 0.3


# -- the watchdog alone ------------------------------------------------------------------------


def _recording() -> tuple[list[str], threading.Event, Callable[[str], None]]:
    calls: list[str] = []
    fired = threading.Event()

    def overrun(reason: str) -> None:
        calls.append(reason)
        fired.set()

    return calls, fired, overrun


def test_a_stop_not_taken_within_the_grace_fires_once() -> None:
    calls, fired, overrun = _recording()
    dog = StopWatchdog(GRACE_S, overrun)
    t0 = time.monotonic()
    dog.arm("cancelled")
    dog.arm("lease_lost")  # a later stop changes nothing: the first one's grace runs
    assert fired.wait(5)
    assert time.monotonic() - t0 >= GRACE_S
    assert dog.thread is not None
    dog.thread.join(5)
    assert calls == ["cancelled"]


def test_a_stop_taken_in_time_never_fires() -> None:
    calls, fired, overrun = _recording()
    dog = StopWatchdog(GRACE_S, overrun)
    dog.arm("cancelled")
    dog.honoured()
    assert not fired.wait(GRACE_S * 3)
    dog.arm("cancelled")  # once honoured, for good
    assert dog.thread is not None
    dog.thread.join(5)
    assert calls == []


def test_a_preemption_is_not_watched() -> None:
    _, fired, overrun = _recording()
    dog = StopWatchdog(GRACE_S, overrun)
    dog.arm("preempted")  # the worker's own stop grace bounds it
    assert dog.thread is None
    assert not fired.wait(GRACE_S * 2)


def test_outside_a_pool_child_the_process_is_never_ended() -> None:
    assert not overrun_mod.in_pool_child()
    assert overrun_mod.hard_exit() is None


# -- the runner's wiring, on a real database -----------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(tmp_path, device="cpu", heartbeat_seconds=0.05, cancel_grace_s=GRACE_S)


class Run:
    """`run_claimed` in a thread, with a pipeline that writes an epoch's row and checkpoint and
    then enters a step that lasts until `release` (or, `cooperative`, until the loop reads a
    stop), and an exit that records its status and lets the step go, as the process's end would
    have."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch,
        *,
        cooperative: bool = False,
    ) -> None:
        self.settings, self.sessions, self.cooperative = settings, sessions, cooperative
        self.in_step = threading.Event()
        self.release = threading.Event()
        self.exits: list[int] = []
        self.outcome: runner.Outcome | None = None
        monkeypatch.setattr(runner, "run_pipeline", self._pipeline)
        monkeypatch.setattr(runner, "hard_exit", lambda: self._exit)
        with sessions() as s:
            job = job_store.create_job(s, iris_spec(), tenant="default", max_attempts=3)
            s.commit()
            self.job_id, self.spec, self.tenant = job.id, dict(job.spec), job.tenant
            lease = lease_store.claim(s, self.job_id, "host/1/x", settings.lease_seconds)
            assert lease is not None
            s.commit()
        self.lease = lease
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.in_step.wait(30)

    def _exit(self, status: int) -> None:
        self.exits.append(status)
        self.release.set()

    def _pipeline(self, spec: Any, info: Any, ctx: Any, hooks: Any, load: Any) -> PipelineResult:
        hooks.stage_started("train")
        hooks.epoch_end(EpochRow({"epoch": 1, "train_loss": 0.5}, is_best=True))
        hooks.checkpoint_saved({"epoch": 1, "step": 0, "path": str(ctx.job_dir / "ckpt-1")})
        self.in_step.set()
        while not self.release.wait(0.01):
            if self.cooperative and hooks.should_stop():
                break
        reason = hooks.should_stop()  # the step is over: the loop reads the stop it waited for
        if reason == "lease_lost":
            raise Stopped(reason)
        return PipelineResult(status="cancelled", epochs_run=1, stop_reason=reason)

    def _run(self) -> None:
        logbook = JobLogBuffer(self.lease.attempt, self.lease.owner)
        with contextlib.ExitStack() as held:
            self.outcome = runner.run_claimed(
                self.job_id,
                self.spec,
                self.tenant,
                None,
                self.lease,
                logbook,
                self.settings,
                self.sessions,
                held,
                cancel_grace_s=self.settings.cancel_grace_s,
            )

    def cancel(self) -> None:
        with self.sessions() as s:
            job = s.get(Job, self.job_id)
            assert job is not None
            job_store.request_cancel(s, job)
            s.commit()

    def job(self) -> Job:
        with self.sessions() as s:
            job = s.get(Job, self.job_id)
            assert job is not None
            s.expunge(job)
            return job

    def stages(self) -> list[tuple[str, str]]:
        with self.sessions() as s:
            rows = s.scalars(select(JobStage).where(JobStage.job_id == self.job_id)).all()
            return [(r.name, r.status) for r in rows]

    def lines(self) -> list[str]:
        with self.sessions() as s:
            return [x.message for x in log_store.list_logs(s, self.job_id)]

    def count(self, table: Any) -> int:
        with self.sessions() as s:
            return len(s.scalars(select(table).where(table.job_id == self.job_id)).all())


def test_a_cancel_the_step_overruns_is_settled_as_a_cancel_and_the_process_ended(
    settings: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(settings, sessions, monkeypatch)
    t0 = time.monotonic()
    run.cancel()
    while run.job().status == "running":
        assert time.monotonic() - t0 < GRACE_S + 3
        time.sleep(0.01)
    assert time.monotonic() - t0 >= GRACE_S  # the loop had its grace first
    assert run.job().status == "cancelled"
    run.thread.join(10)
    assert run.exits == [EXIT_STATUS]
    # The step, let go, found the job settled: its own ending wrote nothing more.
    assert run.outcome is not None and run.outcome.status == "skipped"
    job = run.job()
    assert [e["outcome"] for e in job.attempt_log or []] == ["cancelled"]
    assert job.finished_at is not None and job.lease_until is None
    assert run.stages() == [("train", "cancelled")]
    # What the reporter held was written first: the epoch's row and its checkpoint.
    assert run.count(MetricRow) == 1 and run.count(Checkpoint) == 1
    lines = run.lines()
    assert any("did not end within 0.3 s (TAS_CANCEL_GRACE_S)" in x for x in lines), lines
    assert lines[-1].startswith("cancelled: run 1 stopped"), lines


def test_a_cancel_taken_in_time_is_the_cooperative_one(
    settings: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(settings, sessions, monkeypatch, cooperative=True)
    run.cancel()
    run.thread.join(10)
    assert run.outcome is not None and run.outcome.status == "cancelled"
    time.sleep(GRACE_S * 2)
    assert run.exits == []
    assert run.job().status == "cancelled"
    assert run.stages() == [("train", "cancelled")]
    assert not any("TAS_CANCEL_GRACE_S" in x for x in run.lines())


def test_a_lost_lease_the_step_overruns_ends_the_process_and_writes_nothing(
    settings: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(settings, sessions, monkeypatch)
    with sessions() as s:  # another run owns the job now
        s.execute(update(Job).where(Job.id == run.job_id).values(lease_owner="other/2/y"))
        s.commit()
    t0 = time.monotonic()
    while not run.exits:
        assert time.monotonic() - t0 < GRACE_S + 3
        time.sleep(0.01)
    run.thread.join(10)
    assert run.exits == [EXIT_STATUS]
    assert run.outcome is not None and run.outcome.status == "skipped"
    job = run.job()
    assert job.status == "running" and job.lease_owner == "other/2/y"
    assert [e["outcome"] for e in job.attempt_log or []] == ["running"]
    assert run.stages() == [("train", "running")]


def test_the_job_thread_cannot_pass_the_end_of_its_run_while_the_run_is_being_ended() -> None:
    """The job's thread, its pipeline over, waits in `honoured` while the watchdog ends the run:
    it must not go on to write its result to the pool's shared queue (under that queue's lock)
    as the process is ended, which would leave the lock held by a dead process."""
    entered, release = threading.Event(), threading.Event()

    def overrun(_reason: str) -> None:
        entered.set()
        release.wait(5)

    watchdog = StopWatchdog(0.05, overrun)
    watchdog.arm("cancelled")
    assert entered.wait(5)
    ending = threading.Thread(target=watchdog.honoured)
    ending.start()
    ending.join(0.3)
    assert ending.is_alive()  # held until the overrun is done
    release.set()
    ending.join(5)
    assert not ending.is_alive()

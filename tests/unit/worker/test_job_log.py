"""A running job's log on the worker's side: what the buffer keeps when the database does not take
its lines (bounded, retried with the next flush), what the handler captures (the job's own
thread's warnings and the core's lines, never another thread's), the bound on a chatty job, and
what the runner writes for a run that succeeds, fails, or resumes from its checkpoint."""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.services import jobs as job_service
from tas.core.hooks import EpochRow
from tas.core.spec import JobSpec
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store import leases as lease_store
from tas.store import logs as log_store
from tas.store.orm import Job, JobLog
from worker import claim, runner
from worker.gate import PREEMPT
from worker.joblog import JobLogBuffer, capture
from worker.reporter import DbReporter, epoch_summary, stage_summary

OWNER = "host/1/abcd"


def claimed(sessions: sessionmaker[Session]) -> lease_store.Lease:
    with sessions() as s:
        job = job_store.create_job(s, {"name": "r"}, tenant="default", max_attempts=3)
        s.commit()
        lease = lease_store.claim(s, job.id, OWNER, 60.0)
        assert lease is not None
        s.commit()
    return lease


def log_of(sessions: sessionmaker[Session], job_id: str) -> list[JobLog]:
    with sessions() as s:
        return log_store.list_logs(s, job_id)


# -- the buffer ------------------------------------------------------------------------------


def test_the_buffer_keeps_its_first_lines_and_counts_the_rest() -> None:
    buf = JobLogBuffer(2, "w", max_pending=3)
    for i in range(5):
        buf.add(f"l{i}")
    lines = buf.drain()
    assert [line.message for line in lines[:3]] == ["l0", "l1", "l2"]
    assert lines[3].message.startswith("2 log lines dropped") and lines[3].level == "warning"
    assert {(line.attempt, line.worker) for line in lines} == {(2, "w")}
    assert buf.drain() == []


def test_lines_a_flush_could_not_write_come_back_first() -> None:
    buf = JobLogBuffer(1, "w", max_pending=3)
    buf.add("a")
    buf.add("b")
    taken = buf.drain()
    buf.add("c")
    buf.add("d")
    buf.restore(taken)
    lines = buf.drain()
    assert [line.message for line in lines[:3]] == ["a", "b", "c"]
    assert lines[3].message.startswith("1 log lines dropped")


def test_a_full_log_stops_the_buffer() -> None:
    buf = JobLogBuffer(1, "w")
    buf.add("a")
    buf.written(False)
    buf.add("b")
    assert buf.drain() == []


# -- the handler -------------------------------------------------------------------------------


def test_capture_takes_the_jobs_warnings_and_core_lines_only() -> None:
    buf = JobLogBuffer(1, "w")
    core = logging.getLogger("tas.core.pipeline")
    before = (core.level, warnings.showwarning, list(logging.getLogger().handlers))
    with capture(buf):
        core.info("resumed from the checkpoint after epoch 3")
        logging.getLogger("some.library").warning("careful: %s", "x")
        logging.getLogger("some.library").info("chatter")  # not the core's, not a warning
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a deprecated thing", DeprecationWarning, stacklevel=1)
        try:
            raise ValueError("inner")
        except ValueError:
            logging.getLogger("tas.core.data").exception("cache entry unusable")
        other = threading.Thread(target=lambda: logging.getLogger("x").error("other thread"))
        other.start()
        other.join()
    logging.getLogger("tas.core.pipeline").warning("after the job")
    lines = buf.drain()
    got = [(line.level, line.source, line.message.splitlines()[0]) for line in lines]
    assert got[:3] == [
        ("info", "train", "resumed from the checkpoint after epoch 3"),
        ("warning", "worker", "careful: x"),
        ("warning", "train", got[2][2]),
    ]
    assert got[2][2].startswith("DeprecationWarning: a deprecated thing (")
    assert got[3] == ("error", "train", "cache entry unusable")
    assert "ValueError: inner" in lines[3].message  # the record's traceback comes with it
    assert len(lines) == 4
    # Everything put back as it was.
    assert (core.level, warnings.showwarning, logging.getLogger().handlers) == before


# -- the reporter ------------------------------------------------------------------------------


def test_stages_and_epochs_are_written_with_the_flush(sessions: sessionmaker[Session]) -> None:
    lease = claimed(sessions)
    reporter = DbReporter(sessions, lease, lease_seconds=60.0, interval=60.0)
    reporter.stage_started("train")
    reporter.epoch_end(EpochRow({"epoch": 1, "train_loss": 0.91234, "lr": 0.01}, is_best=True))
    reporter.stage_finished("train", {"seconds": 1.5, "device": "cpu", "path": "/srv/x"})
    lines = log_of(sessions, lease.job_id)
    assert [(line.source, line.message) for line in lines] == [
        ("stage", "stage train started"),
        ("train", "epoch 1: train_loss 0.9123, lr 0.01 (best so far)"),
        ("stage", "stage train finished in 1.50 s (device cpu)"),  # no server path
    ]
    assert {(line.attempt, line.worker) for line in lines} == {(1, OWNER)}


def test_a_failed_flush_keeps_its_lines_for_the_next(sessions: sessionmaker[Session]) -> None:
    lease = claimed(sessions)
    failing = {"n": 1}

    def flaky() -> Session:
        if failing["n"]:
            failing["n"] -= 1
            raise ConnectionError("database down")
        return sessions()

    reporter = DbReporter(flaky, lease, lease_seconds=60.0, interval=60.0)  # type: ignore[arg-type]
    reporter.logbook.add("kept")
    with pytest.raises(ConnectionError):
        reporter.flush()
    assert reporter.flush()
    assert [line.message for line in log_of(sessions, lease.job_id)] == ["kept"]


def test_a_chatty_job_stops_at_the_bound(sessions: sessionmaker[Session]) -> None:
    lease = claimed(sessions)
    reporter = DbReporter(
        sessions,
        lease,
        lease_seconds=60.0,
        interval=60.0,
        log_limits=log_store.LogLimits(max_lines=10, max_line_bytes=8192),
    )
    for epoch in range(1, 31):
        reporter.epoch_end(EpochRow({"epoch": epoch, "train_loss": 1.0 / epoch}))
    lines = log_of(sessions, lease.job_id)
    assert len(lines) == 10
    assert lines[-1].message.startswith("log truncated") and lines[-1].level == "warning"
    assert reporter.logbook.full


def test_summaries() -> None:
    row = EpochRow(
        {"epoch": 3, "train_loss": float("nan"), "val_accuracy": None, "epoch_seconds": 2}
    )
    assert epoch_summary(row, 10) == "epoch 3/10: train_loss nan in 2.00 s"
    assert stage_summary("collect", {"samples": 150}) == "stage collect finished (samples 150)"


# -- the runner --------------------------------------------------------------------------------


def submit(sessions: sessionmaker[Session], settings: Settings, body: dict[str, Any]) -> str:
    with sessions() as s:
        job = job_service.submit(
            s, JobSpec.model_validate(body), tenant="default", max_attempts=3, settings=settings
        )
        s.commit()
        return job.id


def run(sessions: sessionmaker[Session], settings: Settings, job_id: str) -> Job:
    claim.run_job(job_id, settings=settings, sessions=sessions, owner=OWNER)
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


IRIS: dict[str, Any] = {
    "name": "iris",
    "dataset": {"name": "iris", "val_fraction": 0.2},
    "model": {"arch": "mlp", "hidden": [8]},
    "training": {"epochs": 2, "batch_size": 16, "seed": 1},
}


def test_a_succeeded_runs_log(sessions: sessionmaker[Session], settings: Settings) -> None:
    job = run(sessions, settings, submit(sessions, settings, IRIS))
    assert job.status == "succeeded", job.error
    lines = log_of(sessions, job.id)
    text = [line.message for line in lines]
    assert text[0] == f"run 1 started on worker {OWNER} (attempt 1 of 3)"
    for stage in ("collect", "preprocess", "train", "evaluate", "register"):
        assert f"stage {stage} started" in text
        assert any(t.startswith(f"stage {stage} finished in ") for t in text), text
    assert sum(t.startswith("epoch ") for t in text) == 2
    assert text[-1] == "succeeded after 2 epochs: model iris version 1"
    assert {(line.attempt, line.worker) for line in lines} == {(1, OWNER)}


def test_a_failed_runs_log_has_its_traceback(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    diverges = {
        "name": "diverge",
        "dataset": {"name": "linear", "val_fraction": 0},
        "model": {"arch": "linear"},
        "training": {"epochs": 50, "batch_size": 2, "optimizer": "sgd", "lr": 1.0},
    }
    job = run(sessions, settings, submit(sessions, settings, diverges))
    assert job.status == "failed" and job.error and job.error["type"] == "NonFiniteLoss"
    lines = log_of(sessions, job.id)
    failure = next(line for line in lines if line.message.startswith("failed in stage train"))
    assert failure.level == "error"
    assert (
        "NonFiniteLoss" in failure.message
        and "Traceback (most recent call last)" in failure.message
    )
    assert lines[-1].message == "run 1 failed"
    assert "stage train started" in [line.message for line in lines]


def test_an_unexpected_error_keeps_the_error_short_and_the_traceback_in_the_log(
    sessions: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifacts = settings.resolved_artifact_dir

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError(f"cannot read {artifacts}/secret/file.bin")

    monkeypatch.setattr(runner, "run_pipeline", broken)
    job = run(sessions, settings, submit(sessions, settings, IRIS))
    assert job.status == "failed" and job.error is not None
    assert "Traceback" not in job.error["message"] and str(artifacts) not in job.error["message"]
    assert "/logs" in job.error["hint"]
    failure = next(line for line in log_of(sessions, job.id) if line.level == "error")
    assert "Traceback (most recent call last)" in failure.message
    assert "in broken" in failure.message  # the frame that raised
    assert "TAS_ARTIFACT_DIR/secret/file.bin" in failure.message


def test_a_resumed_run_says_where_it_resumed_from(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    limited = {**IRIS, "training": {**IRIS["training"], "epochs": 3, "max_minutes": 1e-6}}
    job_id = submit(sessions, settings, limited)
    assert run(sessions, settings, job_id).status == "failed"  # out of time, checkpointed
    with sessions() as s:
        job_service.resume(
            s, job_store.get_job(s, job_id, tenant=None), max_minutes=60, settings=settings
        )
        s.commit()
    assert run(sessions, settings, job_id).status == "succeeded"
    second = [line for line in log_of(sessions, job_id) if line.attempt == 2]
    assert second[0].message.startswith(f"run 2 started on worker {OWNER}")
    assert "before it, run 1: failed" in second[0].message
    resumed = [line for line in second if line.message.startswith("resumed from the checkpoint")]
    assert resumed and resumed[0].source == "train", [line.message for line in second]


def test_a_preempted_run_says_it_handed_the_job_back(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    job_id = submit(sessions, settings, IRIS)
    PREEMPT.set()  # the worker is stopping: the run stops at its first check
    try:
        job = run(sessions, settings, job_id)
    finally:
        PREEMPT.clear()
    assert job.status == "queued" and job.preemptions == 1
    last = log_of(sessions, job_id)[-1]
    assert last.message == (
        f"preempted: worker {OWNER} is stopping; run 1 stopped and handed the job back to the"
        " queue, to resume from its last checkpoint"
    )
    assert (last.attempt, last.worker) == (1, OWNER)

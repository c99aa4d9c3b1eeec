"""A job's log in the store: read back in order from a cursor, bounded in lines (the last saying
it was cut) and in bytes per line (a traceback keeps its last line), deleted with its job."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from tas.store import jobs as job_store
from tas.store import leases as lease_store
from tas.store import logs as log_store
from tas.store.logs import LogLine
from tas.store.orm import Job, JobLog, JobStatus
from tests.helpers.store import claim_into, expire_lease, migrated_sessions, new_job


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    return migrated_sessions(tmp_path)


def append(
    sessions: sessionmaker[Session],
    job_id: str,
    messages: list[str],
    *,
    max_lines: int = 100,
    max_line_bytes: int = 8192,
) -> bool:
    with sessions() as s:
        still_open = log_store.append_logs(
            s,
            job_id,
            [LogLine(m, attempt=1, worker="w1") for m in messages],
            max_lines=max_lines,
            max_line_bytes=max_line_bytes,
        )
        s.commit()
    return still_open


def messages(sessions: sessionmaker[Session], job_id: str, **kw: int) -> list[str]:
    with sessions() as s:
        return [line.message for line in log_store.list_logs(s, job_id, **kw)]


def test_lines_come_back_in_order_after_the_cursor(sessions: sessionmaker[Session]) -> None:
    job_id, other = new_job(sessions), new_job(sessions)
    append(sessions, job_id, ["a", "b"])
    append(sessions, other, ["x"])  # another job's lines interleave in the table, not in the log
    append(sessions, job_id, ["c", "d", "e"])
    with sessions() as s:
        lines = log_store.list_logs(s, job_id)
    ids = [line.id for line in lines]
    assert [line.message for line in lines] == ["a", "b", "c", "d", "e"]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert {(line.attempt, line.worker, line.level) for line in lines} == {(1, "w1", "info")}
    assert messages(sessions, job_id, after=ids[1]) == ["c", "d", "e"]
    assert messages(sessions, job_id, after=ids[1], limit=2) == ["c", "d"]
    assert messages(sessions, job_id, after=ids[-1]) == []
    assert messages(sessions, other) == ["x"]


def test_a_log_stops_at_its_bound_with_one_truncated_line(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    assert append(sessions, job_id, [f"line {i}" for i in range(7)], max_lines=10)
    assert not append(sessions, job_id, [f"more {i}" for i in range(5)], max_lines=10)
    # Full: what comes later is dropped, and the truncation line is not repeated.
    assert not append(sessions, job_id, ["later"], max_lines=10)
    got = messages(sessions, job_id)
    assert len(got) == 10
    assert got[:9] == [f"line {i}" for i in range(7)] + ["more 0", "more 1"]
    assert got[9] == log_store.TRUNCATED.format(max_lines=10)
    assert "TAS_JOB_LOG_MAX_LINES" in got[9]


def test_exactly_one_short_of_the_bound_then_truncated(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    assert append(sessions, job_id, [str(i) for i in range(9)], max_lines=10)
    assert not append(sessions, job_id, ["one too many"], max_lines=10)
    got = messages(sessions, job_id)
    assert got[:9] == [str(i) for i in range(9)]
    assert got[9].startswith("log truncated")


def test_a_long_line_keeps_its_head_and_its_tail(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    traceback = "Traceback (most recent call last):\n" + "  frame é\n" * 2000 + "ValueError: boom"
    append(sessions, job_id, [traceback], max_line_bytes=1024)
    (stored,) = messages(sessions, job_id)
    assert len(stored.encode()) <= 1024
    assert stored.startswith("Traceback (most recent call last):")
    assert stored.endswith("ValueError: boom")
    assert "bytes cut: TAS_JOB_LOG_MAX_LINE_BYTES" in stored


def test_clip_leaves_short_lines_alone() -> None:
    assert log_store.clip("héllo", 6) == "héllo"
    clipped = log_store.clip("é" * 1000, 300)
    assert len(clipped.encode()) <= 300  # never half a character


def test_a_jobs_log_is_deleted_with_it(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    append(sessions, job_id, ["a", "b"])
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.status = JobStatus.failed.value
        s.commit()
        job_store.delete_job(s, job)
        s.commit()
        assert s.scalar(select(func.count()).select_from(JobLog)) == 0


def test_a_dead_run_is_written_in_its_jobs_log(sessions: sessionmaker[Session]) -> None:
    """Its own lines stop where it died: the reaper (lease expired) or its worker's main process
    (pool child killed) writes how it ended and what became of the job."""
    expired = new_job(sessions)
    claim_into(sessions, expired, "w1", "collect", "train")
    expire_lease(sessions, expired)
    with sessions() as s:
        assert lease_store.settle_expired(s, expired) == JobStatus.queued.value
        s.commit()
        (line,) = log_store.list_logs(s, expired)
    assert line.message == (
        "run 1: lease expired in train (no heartbeat from w1); the job is queued again"
    )
    assert (line.level, line.source, line.attempt, line.worker) == ("error", "reaper", 1, "w1")

    killed = new_job(sessions, max_attempts=1)
    claim_into(sessions, killed, "host/7/ab", "train")
    with sessions() as s:
        status = lease_store.settle_killed(
            s,
            killed,
            "host/7/",
            signal=9,
            detail="by signal 9 (SIGKILL)",
            limits=log_store.LogLimits(max_lines=10, max_line_bytes=1024),
        )
        assert status == JobStatus.failed.value
        s.commit()
        (line,) = log_store.list_logs(s, killed)
    assert line.message == (
        "run 1: killed by signal 9 (SIGKILL) in train; the job failed: its 1 attempts are used up"
    )
    assert (line.source, line.worker) == ("worker", "host/7/ab")

"""The leases' guarantees on a real database file: one runner per job, fenced writes, capped
attempts, preemptions apart from failures, and stages that end with their run (the reaper's own
tests are in tests/unit/tas/test_reaper.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tas.reaper import reap_once
from tas.store import jobs as job_store
from tas.store import leases as lease_store
from tas.store.orm import Job, JobStatus
from tests.helpers.store import (
    RecordingBroker,
    claim_into,
    expire_lease,
    load_job,
    migrated_sessions,
    new_job,
    stages,
)


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    return migrated_sessions(tmp_path)


def test_second_delivery_cannot_claim_a_live_lease(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    with sessions() as s:
        first = lease_store.claim(s, job_id, "w1", 30)
        s.commit()
        second = lease_store.claim(s, job_id, "w2", 30)
        s.commit()
    assert first is not None and first.attempt == 1
    assert second is None


def test_expired_lease_is_taken_over_and_the_old_owner_is_fenced(
    sessions: sessionmaker[Session],
) -> None:
    job_id = new_job(sessions)
    with sessions() as s:
        old = lease_store.claim(s, job_id, "w1", 30)
        s.commit()
    assert old is not None
    expire_lease(sessions, job_id)
    with sessions() as s:
        new = lease_store.claim(s, job_id, "w2", 30)
        s.commit()
        assert new is not None and new.attempt == 2
        # the old worker's heartbeat and final write no longer land
        assert lease_store.renew(s, old, 30, {"stage": "train"}) is None
        assert not lease_store.finish(s, old, JobStatus.succeeded)
        assert lease_store.renew(s, new, 30) is not None
        s.commit()
        job = s.get(Job, job_id)
        assert job is not None
        assert (job.status, job.lease_owner, job.attempts) == ("running", "w2", 2)


def test_cancel_flag_reaches_the_heartbeat(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    with sessions() as s:
        lease = lease_store.claim(s, job_id, "w1", 30)
        s.commit()
        assert lease is not None
        beat = lease_store.renew(s, lease, 30)
        assert beat is not None and not beat.cancel_requested
        job = job_store.get_job(s, job_id, tenant=None)
        job_store.request_cancel(s, job)
        s.commit()
        beat = lease_store.renew(s, lease, 30)
        assert beat is not None and beat.cancel_requested
        assert job.status == "running"  # it stops at the next step, not now


def test_attempts_are_capped(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions, max_attempts=2)
    for owner in ("w1", "w2"):
        with sessions() as s:
            assert lease_store.claim(s, job_id, owner, 30) is not None
            s.commit()
        expire_lease(sessions, job_id)
    with sessions() as s:
        assert lease_store.claim(s, job_id, "w3", 30) is None
        settled = lease_store.fail_unclaimable(s, job_id)
        s.commit()
        assert settled is not None
        assert settled.status == "failed"
        assert settled.error is not None
        assert settled.error["type"] == "MaxAttemptsExceeded"
        message = settled.error["message"]
        assert "run 1: lease expired" in message and "run 2: lease expired" in message


def test_release_puts_the_job_back_in_the_queue(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    with sessions() as s:
        lease = lease_store.claim(s, job_id, "w1", 30)
        s.commit()
        assert lease is not None
        assert lease_store.release(s, lease)
        s.commit()
        again = lease_store.claim(s, job_id, "w2", 30)
        s.commit()
    assert again is not None and again.attempt == 2


def test_a_preemption_is_counted_apart_and_never_spends_an_attempt(
    sessions: sessionmaker[Session],
) -> None:
    job_id = new_job(sessions, max_attempts=1)
    for run in (1, 2, 3):
        lease = claim_into(sessions, job_id, f"w{run}", "collect", "train")
        assert lease.attempt == run
        with sessions() as s:
            assert lease_store.release(s, lease)
            s.commit()
        assert stages(sessions, job_id)[(run, "train")] == "preempted"
    job = load_job(sessions, job_id)
    assert (job.status, job.attempts, job.preemptions, job.claims) == ("queued", 0, 3, 3)
    lease = claim_into(sessions, job_id, "w4", "train")  # max_attempts 1 is still there to use
    with sessions() as s:
        assert lease_store.finish(s, lease, JobStatus.succeeded)
        s.commit()
    job = load_job(sessions, job_id)
    assert (job.status, job.attempts, job.preemptions) == ("succeeded", 1, 3)
    assert [e["outcome"] for e in job.attempt_log or []] == [
        "preempted",
        "preempted",
        "preempted",
        "succeeded",
    ]
    assert [e["run"] for e in job.attempt_log or []] == [1, 2, 3, 4]
    assert all(e["ended_at"] for e in job.attempt_log or [])


def test_a_released_run_is_fenced_out(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    old = claim_into(sessions, job_id, "w1", "train")
    with sessions() as s:
        assert lease_store.release(s, old)
        s.commit()
    new = claim_into(sessions, job_id, "w1", "train")  # the same owner name claims it again
    with sessions() as s:
        assert lease_store.renew(s, old, 30) is None
        assert not lease_store.finish(s, old, JobStatus.failed, error={"type": "X", "message": "y"})
        assert lease_store.renew(s, new, 30) is not None
        s.commit()


def test_stages_end_with_a_failed_job(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    lease = claim_into(sessions, job_id, "w1", "collect", "preprocess", "train")
    error = {"type": "NonFiniteLoss", "message": "loss is nan at epoch 2", "stage": "train"}
    with sessions() as s:
        assert lease_store.finish(s, lease, JobStatus.failed, error=error)
        s.commit()
    assert stages(sessions, job_id) == {
        (1, "collect"): "succeeded",
        (1, "preprocess"): "succeeded",
        (1, "train"): "failed",
    }
    entry = (load_job(sessions, job_id).attempt_log or [])[-1]
    assert entry["outcome"] == "failed" and entry["stage"] == "train"
    assert entry["detail"] == "raised NonFiniteLoss: loss is nan at epoch 2"


def test_stages_end_with_a_cancelled_job(sessions: sessionmaker[Session]) -> None:
    running = new_job(sessions)
    lease = claim_into(sessions, running, "w1", "collect", "train")
    with sessions() as s:
        job_store.request_cancel(s, job_store.get_job(s, running, tenant=None))
        s.commit()
        assert lease_store.finish(s, lease, JobStatus.cancelled, stage=None)
        s.commit()
    assert stages(sessions, running) == {(1, "collect"): "succeeded", (1, "train"): "cancelled"}

    # A job whose worker died, requeued by the reaper, then cancelled while queued.
    queued = new_job(sessions)
    claim_into(sessions, queued, "w2", "train")
    expire_lease(sessions, queued)
    with sessions() as s:
        reap_once(s, RecordingBroker(), requeue_after_s=60)
    with sessions() as s:
        job = job_store.get_job(s, queued, tenant=None)
        assert job.status == "queued"
        job_store.request_cancel(s, job)
        s.commit()
    assert "running" not in stages(sessions, queued).values()
    assert load_job(sessions, queued).status == "cancelled"


def test_a_killed_pool_child_ends_its_run_at_once_and_the_last_attempt_says_why(
    sessions: sessionmaker[Session],
) -> None:
    job_id = new_job(sessions, max_attempts=2)
    claim_into(sessions, job_id, "node@a/101/abc", "collect", "train")
    with sessions() as s:
        # Another child of the same worker is not the owner: nothing changes.
        assert lease_store.settle_killed(s, job_id, "node@a/102/", signal=9, detail="x") is None
        status = lease_store.settle_killed(
            s, job_id, "node@a/101/", signal=9, detail="by signal 9 (SIGKILL)"
        )
        s.commit()
    assert status == "queued"
    assert stages(sessions, job_id)[(1, "train")] == "interrupted"
    claim_into(sessions, job_id, "node@b/7/def", "train")
    expire_lease(sessions, job_id)
    with sessions() as s:
        assert lease_store.claim(s, job_id, "node@c/8/ghi", 30) is None
        settled = lease_store.fail_unclaimable(s, job_id)
        s.commit()
    assert settled is not None and settled.status == "failed"
    assert settled.error is not None and settled.error["type"] == "MaxAttemptsExceeded"
    message = settled.error["message"]
    assert "run 1: killed by signal 9 (SIGKILL) in train" in message
    assert "run 2: lease expired in train (no heartbeat from node@b/7/def)" in message
    assert "memory" not in message + settled.error["hint"]
    log = settled.attempt_log or []
    assert [(e["run"], e["outcome"], e.get("signal")) for e in log] == [
        (1, "killed", 9),
        (2, "lease_expired", None),
    ]
    assert "running" not in stages(sessions, job_id).values()

"""The job store's guarantees on a real database file: one runner per job, fenced writes, capped
attempts, and a reaper that republishes what the broker lost."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from tas import jobstore
from tas.db.engine import make_engine, make_sessionmaker
from tas.db.migrate import upgrade
from tas.db.models import Job, JobStatus, utcnow
from tas.reaper import reap_once

SPEC = {"name": "j", "dataset": {"name": "iris"}, "resources": {"device": "auto"}}


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    url = f"sqlite:///{tmp_path / 'tas.db'}"
    upgrade(url)
    return make_sessionmaker(make_engine(url))


def new_job(sessions: sessionmaker[Session], max_attempts: int = 3) -> str:
    with sessions() as s:
        job = jobstore.create_job(s, SPEC, tenant="default", max_attempts=max_attempts)
        s.commit()
        return job.id


def expire_lease(sessions: sessionmaker[Session], job_id: str) -> None:
    with sessions() as s:
        s.execute(
            update(Job).where(Job.id == job_id).values(lease_until=utcnow() - timedelta(seconds=1))
        )
        s.commit()


def test_second_delivery_cannot_claim_a_live_lease(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    with sessions() as s:
        first = jobstore.claim(s, job_id, "w1", 30)
        s.commit()
        second = jobstore.claim(s, job_id, "w2", 30)
        s.commit()
    assert first is not None and first.attempt == 1
    assert second is None


def test_expired_lease_is_taken_over_and_the_old_owner_is_fenced(
    sessions: sessionmaker[Session],
) -> None:
    job_id = new_job(sessions)
    with sessions() as s:
        old = jobstore.claim(s, job_id, "w1", 30)
        s.commit()
    assert old is not None
    expire_lease(sessions, job_id)
    with sessions() as s:
        new = jobstore.claim(s, job_id, "w2", 30)
        s.commit()
        assert new is not None and new.attempt == 2
        # the old worker's heartbeat and final write no longer land
        assert jobstore.renew(s, old, 30, {"stage": "train"}) is None
        assert not jobstore.finish(s, old, JobStatus.succeeded)
        assert jobstore.renew(s, new, 30) is not None
        s.commit()
        job = s.get(Job, job_id)
        assert job is not None
        assert (job.status, job.lease_owner, job.attempts) == ("running", "w2", 2)


def test_cancel_flag_reaches_the_heartbeat(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    with sessions() as s:
        lease = jobstore.claim(s, job_id, "w1", 30)
        s.commit()
        assert lease is not None
        beat = jobstore.renew(s, lease, 30)
        assert beat is not None and not beat.cancel_requested
        job = jobstore.get_job(s, job_id)
        jobstore.request_cancel(s, job)
        s.commit()
        beat = jobstore.renew(s, lease, 30)
        assert beat is not None and beat.cancel_requested
        assert job.status == "running"  # it stops at the next step, not now


def test_attempts_are_capped(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions, max_attempts=2)
    for owner in ("w1", "w2"):
        with sessions() as s:
            assert jobstore.claim(s, job_id, owner, 30) is not None
            s.commit()
        expire_lease(sessions, job_id)
    with sessions() as s:
        assert jobstore.claim(s, job_id, "w3", 30) is None
        settled = jobstore.fail_unclaimable(s, job_id)
        s.commit()
        assert settled is not None
        assert settled.status == "failed"
        assert settled.error is not None
        assert settled.error["type"] == "MaxAttemptsExceeded"
        assert "2 times" in settled.error["message"]


def test_release_puts_the_job_back_in_the_queue(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    with sessions() as s:
        lease = jobstore.claim(s, job_id, "w1", 30)
        s.commit()
        assert lease is not None
        assert jobstore.release(s, lease)
        s.commit()
        again = jobstore.claim(s, job_id, "w2", 30)
        s.commit()
    assert again is not None and again.attempt == 2


class Recorder:
    def __init__(self) -> None:
        self.published: list[str] = []

    def publish(self, job_id: str, queue: str) -> bool:
        self.published.append(job_id)
        return True


def test_reaper_republishes_lost_jobs_only(sessions: sessionmaker[Session]) -> None:
    fresh = new_job(sessions)  # queued just now: its message is presumably in the broker
    stale = new_job(sessions)
    running_dead = new_job(sessions)
    running_alive = new_job(sessions)
    with sessions() as s:
        s.execute(
            update(Job).where(Job.id == stale).values(queued_at=utcnow() - timedelta(minutes=5))
        )
        assert jobstore.claim(s, running_dead, "w1", 30)
        assert jobstore.claim(s, running_alive, "w2", 30)
        s.commit()
    expire_lease(sessions, running_dead)
    pub = Recorder()
    with sessions() as s:
        reaped = reap_once(s, pub, requeue_after_s=60)  # type: ignore[arg-type]
    assert sorted(pub.published) == sorted([stale, running_dead])
    assert fresh not in reaped.republished and running_alive not in reaped.republished
    with sessions() as s:  # republishing resets the clock: no flood of duplicates
        assert reap_once(s, pub, requeue_after_s=60).republished == []  # type: ignore[arg-type]


def test_reaper_backs_off_for_a_job_that_keeps_waiting(sessions: sessionmaker[Session]) -> None:
    """A job waiting behind busy workers is republished after R, 2R, 4R... not every R."""
    job_id = new_job(sessions)
    pub = Recorder()

    def waited(seconds: float) -> None:
        with sessions() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(queued_at=utcnow() - timedelta(seconds=seconds))
            )
            s.commit()

    for n in range(4):
        limit = 60 * 2**n
        waited(limit - 5)
        with sessions() as s:
            assert reap_once(s, pub, requeue_after_s=60).republished == []  # type: ignore[arg-type]
        waited(limit + 5)
        with sessions() as s:
            assert reap_once(s, pub, requeue_after_s=60).republished == [job_id]  # type: ignore[arg-type]
    assert pub.published == [job_id] * 4

"""The reaper on a real database file: it publishes again only what the broker can have lost (a
queued job past its time with fewer messages than queued jobs, a run whose lease expired), backs
off for a job that keeps waiting, and puts an interrupted run ahead of jobs not yet started."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from tas.reaper import reap_once
from tas.store import leases as lease_store
from tas.store.orm import Job, utcnow
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


def test_reaper_republishes_lost_jobs_only(sessions: sessionmaker[Session]) -> None:
    fresh = new_job(sessions)  # queued just now: its message is presumably in the broker
    stale = new_job(sessions)
    running_dead = new_job(sessions)
    running_alive = new_job(sessions)
    with sessions() as s:
        s.execute(
            update(Job).where(Job.id == stale).values(queued_at=utcnow() - timedelta(minutes=5))
        )
        assert lease_store.claim(s, running_dead, "w1", 30)
        assert lease_store.claim(s, running_alive, "w2", 30)
        s.commit()
    expire_lease(sessions, running_dead)
    pub = RecordingBroker()
    with sessions() as s:
        reaped = reap_once(s, pub, requeue_after_s=60)
    assert sorted(pub.published) == sorted([stale, running_dead])
    assert fresh not in reaped.republished and running_alive not in reaped.republished
    with sessions() as s:  # republishing resets the clock: no flood of duplicates
        assert reap_once(s, pub, requeue_after_s=60).republished == []


def test_reaper_backs_off_for_a_job_that_keeps_waiting(sessions: sessionmaker[Session]) -> None:
    """A job waiting behind busy workers is republished after R, 2R, 4R... not every R."""
    job_id = new_job(sessions)
    pub = RecordingBroker()

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
            assert reap_once(s, pub, requeue_after_s=60).republished == []
        waited(limit + 5)
        with sessions() as s:
            assert reap_once(s, pub, requeue_after_s=60).republished == [job_id]
    assert pub.published == [job_id] * 4


def test_reaper_republishes_a_queued_job_only_when_its_message_can_be_gone(
    sessions: sessionmaker[Session],
) -> None:
    backlog = [new_job(sessions) for _ in range(3)]
    with sessions() as s:
        s.execute(
            update(Job).where(Job.id.in_(backlog)).values(queued_at=utcnow() - timedelta(minutes=5))
        )
        s.commit()
    waiting = RecordingBroker(sizes={"default": 3})  # three messages for three queued jobs
    with sessions() as s:
        assert reap_once(s, waiting, requeue_after_s=60).republished == []
    emptied = RecordingBroker(sizes={"default": 0})  # the broker restarted empty
    with sessions() as s:
        assert sorted(reap_once(s, emptied, requeue_after_s=60).republished) == sorted(backlog)
    assert emptied.resumed == []  # never ran: they keep their place behind interrupted jobs


def test_reaper_puts_an_expired_run_ahead_and_says_what_happened(
    sessions: sessionmaker[Session],
) -> None:
    job_id = new_job(sessions)
    claim_into(sessions, job_id, "w1", "collect", "train")
    expire_lease(sessions, job_id)
    pub = RecordingBroker()
    with sessions() as s:
        assert reap_once(s, pub, requeue_after_s=60).republished == [job_id]
    assert pub.resumed == [job_id]
    job = load_job(sessions, job_id)
    assert (job.status, job.attempts, job.lease_owner) == ("queued", 1, None)
    assert (job.attempt_log or [])[-1]["outcome"] == "lease_expired"
    assert stages(sessions, job_id)[(1, "train")] == "interrupted"


def test_reaper_sends_only_as_many_messages_as_are_missing(
    sessions: sessionmaker[Session],
) -> None:
    ids = [new_job(sessions) for _ in range(3)]
    with sessions() as s:
        for minutes, job_id in zip((9, 7, 5), ids, strict=True):
            s.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(queued_at=utcnow() - timedelta(minutes=minutes))
            )
        s.commit()
    one_lost = RecordingBroker(sizes={"default": 2})
    with sessions() as s:
        assert reap_once(s, one_lost, requeue_after_s=60).republished == [ids[0]]

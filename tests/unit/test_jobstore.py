"""The job store's guarantees on a real database file: one runner per job, fenced writes, capped
attempts, and a reaper that republishes what the broker lost."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from tas.reaper import reap_once
from tas.store import jobs as job_store
from tas.store import leases as lease_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.migrate import upgrade
from tas.store.orm import Job, JobStage, JobStatus, utcnow

SPEC = {"name": "j", "dataset": {"name": "iris"}, "resources": {"device": "auto"}}


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    url = f"sqlite:///{tmp_path / 'tas.db'}"
    upgrade(url)
    return make_sessionmaker(make_engine(url))


def new_job(sessions: sessionmaker[Session], max_attempts: int = 3) -> str:
    with sessions() as s:
        job = job_store.create_job(s, SPEC, tenant="default", max_attempts=max_attempts)
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
        job = job_store.get_job(s, job_id)
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


class Recorder:
    """The broker as the reaper sees it: what was published, and how many messages wait."""

    def __init__(self, sizes: dict[str, int] | None = None) -> None:
        self.published: list[str] = []
        self.resumed: list[str] = []
        self.sizes = sizes or {}

    def publish(self, job_id: str, queue: str, *, resumed: bool = False) -> bool:
        self.published.append(job_id)
        if resumed:
            self.resumed.append(job_id)
        return True

    def queue_sizes(self, queues: list[str]) -> dict[str, int] | None:
        return {q: self.sizes.get(q, 0) for q in queues}


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
    pub = Recorder()
    with sessions() as s:
        reaped = reap_once(s, pub, requeue_after_s=60)
    assert sorted(pub.published) == sorted([stale, running_dead])
    assert fresh not in reaped.republished and running_alive not in reaped.republished
    with sessions() as s:  # republishing resets the clock: no flood of duplicates
        assert reap_once(s, pub, requeue_after_s=60).republished == []


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
            assert reap_once(s, pub, requeue_after_s=60).republished == []
        waited(limit + 5)
        with sessions() as s:
            assert reap_once(s, pub, requeue_after_s=60).republished == [job_id]
    assert pub.published == [job_id] * 4


def stages(sessions: sessionmaker[Session], job_id: str) -> dict[tuple[int, str], str]:
    with sessions() as s:
        return {
            (st.attempt, st.name): st.status
            for st in s.scalars(select(JobStage).where(JobStage.job_id == job_id))
        }


def claim_into(
    sessions: sessionmaker[Session], job_id: str, owner: str, *names: str
) -> lease_store.Lease:
    """Claim and open stages (the last one stays running), as a worker would."""
    with sessions() as s:
        lease = lease_store.claim(s, job_id, owner, 30)
        assert lease is not None
        for name in names:
            lease_store.renew(s, lease, 30, {"stage": name})
            lease_store.start_stage(s, lease, name)
        for name in names[:-1]:
            lease_store.finish_stage(s, lease, name, {})
        s.commit()
    return lease


def load(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


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
    job = load(sessions, job_id)
    assert (job.status, job.attempts, job.preemptions, job.claims) == ("queued", 0, 3, 3)
    lease = claim_into(sessions, job_id, "w4", "train")  # max_attempts 1 is still there to use
    with sessions() as s:
        assert lease_store.finish(s, lease, JobStatus.succeeded)
        s.commit()
    job = load(sessions, job_id)
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
    entry = (load(sessions, job_id).attempt_log or [])[-1]
    assert entry["outcome"] == "failed" and entry["stage"] == "train"
    assert entry["detail"] == "raised NonFiniteLoss: loss is nan at epoch 2"


def test_stages_end_with_a_cancelled_job(sessions: sessionmaker[Session]) -> None:
    running = new_job(sessions)
    lease = claim_into(sessions, running, "w1", "collect", "train")
    with sessions() as s:
        job_store.request_cancel(s, job_store.get_job(s, running))
        s.commit()
        assert lease_store.finish(s, lease, JobStatus.cancelled, stage=None)
        s.commit()
    assert stages(sessions, running) == {(1, "collect"): "succeeded", (1, "train"): "cancelled"}

    # A job whose worker died, requeued by the reaper, then cancelled while queued.
    queued = new_job(sessions)
    claim_into(sessions, queued, "w2", "train")
    expire_lease(sessions, queued)
    with sessions() as s:
        reap_once(s, Recorder(), requeue_after_s=60)
    with sessions() as s:
        job = job_store.get_job(s, queued)
        assert job.status == "queued"
        job_store.request_cancel(s, job)
        s.commit()
    assert "running" not in stages(sessions, queued).values()
    assert load(sessions, queued).status == "cancelled"


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


def test_reaper_republishes_a_queued_job_only_when_its_message_can_be_gone(
    sessions: sessionmaker[Session],
) -> None:
    backlog = [new_job(sessions) for _ in range(3)]
    with sessions() as s:
        s.execute(
            update(Job).where(Job.id.in_(backlog)).values(queued_at=utcnow() - timedelta(minutes=5))
        )
        s.commit()
    waiting = Recorder(sizes={"default": 3})  # three messages for three queued jobs
    with sessions() as s:
        assert reap_once(s, waiting, requeue_after_s=60).republished == []
    emptied = Recorder(sizes={"default": 0})  # the broker restarted empty
    with sessions() as s:
        assert sorted(reap_once(s, emptied, requeue_after_s=60).republished) == sorted(backlog)
    assert emptied.resumed == []  # never ran: they keep their place behind interrupted jobs


def test_reaper_puts_an_expired_run_ahead_and_says_what_happened(
    sessions: sessionmaker[Session],
) -> None:
    job_id = new_job(sessions)
    claim_into(sessions, job_id, "w1", "collect", "train")
    expire_lease(sessions, job_id)
    pub = Recorder()
    with sessions() as s:
        assert reap_once(s, pub, requeue_after_s=60).republished == [job_id]
    assert pub.resumed == [job_id]
    job = load(sessions, job_id)
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
    one_lost = Recorder(sizes={"default": 2})
    with sessions() as s:
        assert reap_once(s, one_lost, requeue_after_s=60).republished == [ids[0]]

"""The reaper: the database says which jobs should be running; this makes the broker agree.

Runs in the API process. It settles (a) running jobs whose lease expired: their worker died, the
run ends as `lease_expired`, and the job is published again ahead of jobs not yet started (a new
worker resumes it from its checkpoint), or settled when it has no attempts left; and (b) queued
jobs whose message is gone (the broker restarted empty, or the API died between commit and
publish): one that waited past `requeue_after_s` is published again only when the broker holds
fewer messages for its queue than there are queued jobs in it, so a backlog that is merely
waiting for busy workers is never duplicated. A duplicate is still harmless (a claim is one
conditional UPDATE, and a worker drops a message for a job that cannot run without a fork)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from tas.store import leases as lease_store
from tas.store import logs as log_store
from tas.store.engine import rowcount
from tas.store.orm import FINISHED, Job, JobStatus, utcnow

log = logging.getLogger(__name__)


class Broker(Protocol):
    def publish(self, job_id: str, queue: str, *, resumed: bool = False) -> bool: ...

    def queue_sizes(self, queues: list[str]) -> dict[str, int] | None: ...


@dataclass
class Reaped:
    republished: list[str]
    failed: list[str]


def reap_once(
    session: Session,
    publisher: Broker,
    *,
    requeue_after_s: float,
    log_limits: log_store.LogLimits | None = None,
) -> Reaped:
    """One pass. A queued job that nobody claims is considered after `requeue_after_s`, then after
    twice that, four times...: even when the broker's count says a message may be missing, the
    backoff keeps the duplicates logarithmic in the wait."""
    now = utcnow()
    republished: list[str] = []
    failed: list[str] = []
    sends: list[tuple[str, str, bool]] = []

    expired = session.execute(
        select(Job.id, Job.queue).where(
            Job.status == JobStatus.running.value, Job.lease_until < now
        )
    ).all()
    for job_id, queue in expired:
        status = lease_store.settle_expired(session, job_id, log_limits)
        if status in FINISHED:
            failed.append(job_id)
        elif status == JobStatus.queued.value:
            sends.append((job_id, queue, True))

    stale = session.execute(
        select(Job.id, Job.queue, Job.queued_at, Job.republishes, Job.claims).where(
            Job.status == JobStatus.queued.value,
            Job.queued_at < now - timedelta(seconds=requeue_after_s),
        )
    ).all()
    due = [
        row
        for row in stale
        if row.queued_at < now - timedelta(seconds=requeue_after_s * 2 ** min(row.republishes, 16))
    ]
    if due:
        sizes = publisher.queue_sizes(sorted({row.queue for row in due}))
        counts = session.execute(
            select(Job.queue, func.count())
            .where(Job.status == JobStatus.queued.value)
            .group_by(Job.queue)
        ).all()
        waiting: dict[str, int] = {queue: int(n) for queue, n in counts}
        for _, queue, _ in sends:  # lease-expired jobs just requeued: their messages go out below
            waiting[queue] = waiting.get(queue, 0) - 1
        # Messages missing per queue: at most that many are sent again, longest waiting first
        # (a message a worker holds unacknowledged is not counted by the broker, so the count
        # can overstate what is lost by the few messages in flight, never more).
        missing = {q: n - (sizes.get(q, 0) if sizes is not None else 0) for q, n in waiting.items()}
        for job_id, queue, _, republishes, claims in sorted(due, key=lambda r: r.queued_at):
            settled = lease_store.fail_unclaimable(session, job_id, log_limits)
            if settled is not None:
                failed.append(job_id)
                continue
            if missing.get(queue, 0) <= 0:
                continue  # as many messages as queued jobs: this one's is waiting its turn
            missing[queue] -= 1
            # Conditional, like a claim: a worker that took the job since the SELECT keeps it.
            changed = rowcount(
                session.execute(
                    update(Job)
                    .where(
                        Job.id == job_id,
                        Job.status == JobStatus.queued.value,
                        Job.claims == claims,
                    )
                    .values(queued_at=now, republishes=republishes + 1)
                )
            )
            if changed:
                sends.append((job_id, queue, claims > 0))
    session.commit()
    for job_id, queue, resumed in sends:
        publisher.publish(job_id, queue, resumed=resumed)
        republished.append(job_id)
    if republished or failed:
        log.info("reaper: republished %s, settled %s", republished, failed)
    return Reaped(republished, failed)


class Reaper:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        publisher: Broker,
        *,
        interval: float,
        requeue_after_s: float,
        log_limits: log_store.LogLimits | None = None,
    ) -> None:
        self.sessions, self.publisher = sessions, publisher
        self.interval, self.requeue_after_s = interval, requeue_after_s
        self.log_limits = log_limits
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tas-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.sessions() as s:
                    reap_once(
                        s,
                        self.publisher,
                        requeue_after_s=self.requeue_after_s,
                        log_limits=self.log_limits,
                    )
            except Exception:
                log.exception("reaper pass failed; trying again in %.0f s", self.interval)

"""The reaper: the database says which jobs should be running; this makes the broker agree.

Runs in the API process. It publishes again (a) running jobs whose lease expired (their worker
died: a new worker claims them and resumes from the checkpoint) and (b) queued jobs nobody claimed
for a while (the broker restarted empty, or the API died between commit and publish). Duplicate
messages are harmless: a claim is one conditional UPDATE, so only one delivery runs the job."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from tas import jobstore
from tas.db.models import Job, JobStatus, utcnow
from tas.jobstore import rowcount
from tas.queue import Publisher

log = logging.getLogger(__name__)


@dataclass
class Reaped:
    republished: list[str]
    failed: list[str]


def reap_once(session: Session, publisher: Publisher, *, requeue_after_s: float) -> Reaped:
    """One pass. A queued job that nobody claims is published again after `requeue_after_s`, then
    after twice that, four times... : the reaper cannot tell a lost message from a job waiting
    behind busy workers, and the backoff keeps the duplicates it sends for the latter logarithmic
    in the wait instead of linear (each one costs a worker a refused claim)."""
    now = utcnow()
    stale = now - timedelta(seconds=requeue_after_s)
    lost = or_(
        and_(Job.status == JobStatus.running.value, Job.lease_until < now),
        and_(Job.status == JobStatus.queued.value, Job.queued_at < stale),
    )
    rows = session.execute(
        select(Job.id, Job.queue, Job.status, Job.queued_at, Job.republishes).where(lost)
    ).all()
    republished, failed, queues = [], [], {}
    for job_id, queue, status, queued_at, republishes in rows:
        if status == JobStatus.queued.value:
            wait = timedelta(seconds=requeue_after_s * 2 ** min(republishes, 16))
            if queued_at >= now - wait:
                continue
        settled = jobstore.fail_unclaimable(session, job_id)
        if settled is not None:
            failed.append(job_id)
            continue
        # Back to queued: the dead owner is fenced out (its writes need status running), and the
        # stale-queued clock, reset here, decides when to publish again if nobody claims it.
        # Conditional, like a claim: a worker that took the job since the SELECT keeps it.
        changed = rowcount(
            session.execute(
                update(Job)
                .where(Job.id == job_id, lost)
                .values(
                    status=JobStatus.queued.value,
                    lease_owner=None,
                    lease_until=None,
                    queued_at=now,
                    republishes=republishes + 1 if status == JobStatus.queued.value else 0,
                )
            )
        )
        if changed:
            republished.append(job_id)
            queues[job_id] = queue
    session.commit()
    for job_id in republished:
        publisher.publish(job_id, queues[job_id])
    if republished or failed:
        log.info("reaper: republished %s, settled %s", republished, failed)
    return Reaped(republished, failed)


class Reaper:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        publisher: Publisher,
        *,
        interval: float,
        requeue_after_s: float,
    ) -> None:
        self.sessions, self.publisher = sessions, publisher
        self.interval, self.requeue_after_s = interval, requeue_after_s
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
                    reap_once(s, self.publisher, requeue_after_s=self.requeue_after_s)
            except Exception:
                log.exception("reaper pass failed; trying again in %.0f s", self.interval)

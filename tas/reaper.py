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
    now = utcnow()
    stale = now - timedelta(seconds=requeue_after_s)
    lost = or_(
        and_(Job.status == JobStatus.running.value, Job.lease_until < now),
        and_(Job.status == JobStatus.queued.value, Job.queued_at < stale),
    )
    rows = session.execute(select(Job.id, Job.queue).where(lost)).all()
    republished, failed = [], []
    for job_id, _queue in rows:
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
                    status=JobStatus.queued.value, lease_owner=None, lease_until=None, queued_at=now
                )
            )
        )
        if changed:
            republished.append(job_id)
    session.commit()
    for job_id, queue in rows:
        if job_id in republished:
            publisher.publish(job_id, queue)
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

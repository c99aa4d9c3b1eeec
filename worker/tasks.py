"""Celery tasks: thin. A task takes only the job id; the runner re-reads the job from the database.

`register` adds them to the worker's app (`worker.celery_app`); a task reads the settings from
the app it runs under."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import uuid
from functools import cache, partial
from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.signals import worker_process_init
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from tas.queue import RUN_JOB, TasCelery, send_job
from tas.store.engine import make_engine, make_sessionmaker
from worker.claim import run_job
from worker.gate import PREEMPT, JobRequest, job_strategy

log = logging.getLogger(__name__)


@cache
def _sessions(url: str, pid: int) -> sessionmaker[Session]:
    """One engine per process, made after the fork (connections must not cross a fork)."""
    return make_sessionmaker(make_engine(url))


#: True in a prefork pool child (worker_process_init fires only there).
_POOL_CHILD = False


def register(app: TasCelery) -> Task:
    """Add `tas.run_job` to the worker's app, and open each new pool child's database connection
    before its message arrives."""
    task: Task = app.task(
        name=RUN_JOB,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        # The main process drops messages that cannot start a run and settles a child's death.
        Strategy=staticmethod(job_strategy),  # a class attribute: not a method of the task
        Request=JobRequest,
    )(run_job_task)
    worker_process_init.connect(
        partial(_child_init, app.settings.resolved_database_url), weak=False
    )
    return task


def run_job_task(self: Task, job_id: str) -> str:
    log.debug("task for job %s started in pool child %d", job_id, os.getpid())
    if PREEMPT.is_set():
        # This worker is stopping (a message that reached a child before the gate closed): claim
        # nothing, and hand the message back for another worker or the next start.
        raise Reject("worker stopping", requeue=True)
    owner = f"{self.request.hostname or socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
    previous = None
    if _POOL_CHILD:
        # Installed here, not at process init: billiard resets signal handlers after its
        # initializer runs. SIGTERM to this child now means: checkpoint this job and hand it back.
        previous = signal.signal(signal.SIGTERM, _preempt)
    settings = self.app.settings
    sessions = _sessions(settings.resolved_database_url, os.getpid())
    try:
        outcome = run_job(job_id, settings=settings, sessions=sessions, owner=owner)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    log.info("job %s: %s", job_id, outcome.status)
    if outcome.status == "requeued":
        # Handed back on shutdown: publish it again, ahead of jobs not yet started, so another
        # worker (or this one's next start) resumes it now rather than when the reaper looks.
        # This worker's own gate hands the message back if it arrives while it stops.
        send_job(self.app, job_id, outcome.queue or "default", resumed=True)
    elif outcome.status == "busy":
        # Its GPUs stayed busy: unclaimed, it goes back to the end of its queue, for whichever
        # worker has them free first (this one tries again only after its other messages).
        send_job(self.app, job_id, outcome.queue or "default")
    return outcome.status


def _preempt(signum: int, frame: Any) -> None:
    PREEMPT.set()


def _child_init(database_url: str, **_: object) -> None:
    """A new pool child gets ready before its message: its database connection is opened now,
    so a claim is the first thing a job waits for (torch and the job code came with the fork)."""
    global _POOL_CHILD
    _POOL_CHILD = True
    t0 = time.monotonic()
    try:
        with _sessions(database_url, os.getpid())() as s:
            s.execute(text("SELECT 1"))
    except Exception:  # the job's own claim will retry and report it
        log.exception("pool child could not reach the database yet")
    log.debug(
        "pool child %d ready (database in %.0f ms)", os.getpid(), (time.monotonic() - t0) * 1000
    )

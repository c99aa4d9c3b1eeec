"""Celery tasks: thin. A task takes only the job id; the runner re-reads the job from the database."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import uuid
from functools import cache
from typing import Any

from celery import Task
from celery.signals import worker_process_init, worker_shutting_down
from sqlalchemy.orm import Session, sessionmaker

from tas.db.engine import make_engine, make_sessionmaker
from tas.queue import RUN_JOB
from worker.celery_app import app, settings
from worker.runner import PREEMPT, run_job

log = logging.getLogger(__name__)


@cache
def _sessions(pid: int) -> sessionmaker[Session]:
    """One engine per process, made after the fork (connections must not cross a fork)."""
    return make_sessionmaker(make_engine(settings.resolved_database_url))


#: True in a prefork pool child (worker_process_init fires only there).
_POOL_CHILD = False


@app.task(name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job_task(self: Task, job_id: str) -> str:
    owner = f"{self.request.hostname or socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
    previous = None
    if _POOL_CHILD:
        # Installed here, not at process init: billiard resets signal handlers after its
        # initializer runs. SIGTERM now means: checkpoint this job and hand it back.
        previous = signal.signal(signal.SIGTERM, _preempt)
    try:
        outcome = run_job(job_id, settings=settings, sessions=_sessions(os.getpid()), owner=owner)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    log.info("job %s: %s", job_id, outcome.status)
    if outcome.status == "requeued":
        # Handed back on shutdown: publish it again so another worker resumes it now rather than
        # when the reaper notices. A duplicate is harmless (claims are exclusive).
        app.send_task(RUN_JOB, args=[job_id], queue=outcome.queue or "default")
    return outcome.status


def _preempt(signum: int, frame: Any) -> None:
    PREEMPT.set()


@worker_process_init.connect
def _child_init(**_: object) -> None:
    global _POOL_CHILD
    _POOL_CHILD = True


@worker_shutting_down.connect
def _preempt_running_jobs(**_: object) -> None:
    """Warm shutdown (SIGTERM to the worker): tell whoever runs a job to checkpoint and stop.

    The solo pool runs jobs in this process; a prefork child is not told by Celery (it would
    train to the end while the worker waits), so signal the busy children ourselves."""
    from celery.worker import state

    PREEMPT.set()
    for request in list(state.active_requests):
        pid = getattr(request, "worker_pid", None)
        if pid and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

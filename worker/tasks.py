"""Celery tasks: thin. A task takes only the job id; the runner re-reads the job from the database."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from functools import cache

from celery import Task
from celery.signals import worker_shutting_down
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


@app.task(name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job_task(self: Task, job_id: str) -> str:
    owner = f"{self.request.hostname or socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
    outcome = run_job(job_id, settings=settings, sessions=_sessions(os.getpid()), owner=owner)
    log.info("job %s: %s", job_id, outcome.status)
    return outcome.status


@worker_shutting_down.connect
def _preempt_running_jobs(**_: object) -> None:
    """Warm shutdown (SIGTERM): the running job checkpoints and goes back to the queue."""
    PREEMPT.set()

"""What reaches a pool child, decided in the worker's main process.

A pool child costs a fork (and, with one job per child, a fresh one each time), so a message that
cannot start a run is settled here with one indexed SELECT instead: a job that is finished,
cancelled or running under a live lease elsewhere has its message acknowledged and dropped. Once
the worker begins a warm shutdown it claims nothing: messages still arriving are handed back to
the broker, and a child that gets one anyway refuses it (the stop flag is shared with every child,
forked before or after the shutdown began). When a pool child dies under a job, this process
learns how (signal or exit code) and ends the run at once, instead of when its lease runs out.

Every database call here runs inside the fork guard (see worker/forkguard.py) on an engine that
keeps no connection between calls, so a pool child forked meanwhile inherits none of it."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import re
import threading
from collections.abc import Callable
from datetime import datetime
from functools import cache, partial
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from celery.exceptions import WorkerLostError
from celery.signals import worker_shutting_down
from celery.worker.request import Request
from celery.worker.state import task_ready
from celery.worker.strategy import default as default_strategy
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tas.queue import TasCelery, send_job
from tas.settings import Settings
from tas.store import leases as lease_store
from tas.store import logs as log_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.orm import FINISHED, Job, JobStatus, utcnow
from worker.forkguard import GUARD
from worker.pool import JobNotStarted

log = logging.getLogger(__name__)


class Preempt(threading.Event):
    """Whether the job running in this process should checkpoint and hand itself back.

    Two sources: the worker's warm shutdown, set in the main process in memory shared with every
    pool child (a child forked earlier sees it at once, with no signal to deliver), and a SIGTERM
    sent to this child alone (`set()`, the event's own flag, which must not stop its siblings).
    Read at every training step, so both are plain memory reads."""

    def __init__(self) -> None:
        super().__init__()
        self._shared = multiprocessing.RawValue(ctypes.c_bool, False)

    @property
    def shutting_down(self) -> bool:
        return bool(self._shared.value)

    def stop_worker(self) -> None:
        self._shared.value = True

    def is_set(self) -> bool:
        return bool(self._shared.value) or super().is_set()


#: Created at import, in the main process before the pool forks, so every child shares it.
PREEMPT = Preempt()

_LOST = re.compile(r"signal (\d+) \((\w+)\)")
_EXIT = re.compile(r"exitcode (-?\d+)")


def lost_detail(text: str) -> tuple[int | None, str]:
    """(signal number, words) from billiard's `Worker exited prematurely: signal 9 (SIGKILL)`."""
    if m := _LOST.search(text):
        return int(m.group(1)), f"by signal {m.group(1)} ({m.group(2)})"
    if m := _EXIT.search(text):
        return None, f"with exit code {m.group(1)}"
    return None, f"({text})"


class Gate:
    """The main process's view of the database: one engine, made on first use (the pool
    children never use it: each makes its own after the fork)."""

    def __init__(self, sessions: Callable[[], sessionmaker[Session]], celery: Any) -> None:
        self._sessions = sessions
        self.celery = celery

    def _log_limits(self) -> log_store.LogLimits | None:
        """The job log's bounds from the app's settings (a test's bare app has none)."""
        settings = getattr(self.celery, "settings", None)
        return log_store.LogLimits.of(settings) if isinstance(settings, Settings) else None

    def drop_reason(self, job_id: str, now: datetime | None = None) -> str | None:
        """Why this message cannot start a run (it is acknowledged and dropped), or None: hand it
        to a pool child, whose claim decides for certain."""
        now = now or utcnow()
        with GUARD.database(), self._sessions()() as s:
            row = s.execute(
                select(
                    Job.status,
                    Job.lease_until,
                    Job.lease_owner,
                    Job.cancel_requested,
                    Job.attempts,
                    Job.max_attempts,
                ).where(Job.id == job_id)
            ).first()
            if row is None:
                return "no such job"
            status, lease_until, owner, cancel, attempts, max_attempts = row
            if status in FINISHED:
                return f"already {status}"
            if status == JobStatus.running.value and lease_until is not None and lease_until >= now:
                return f"running under {owner}'s live lease"
            if cancel or attempts >= max_attempts:
                settled = lease_store.fail_unclaimable(s, job_id, self._log_limits())
                s.commit()
                if settled is not None:
                    return f"settled as {settled.status}"
        return None

    def child_lost(self, job_id: str, hostname: str, pid: int, text: str) -> bool:
        """The pool child `pid` died running `job_id`. If that child held the job, its run ends
        as `killed` (with the signal) and the job is published again ahead of jobs not yet
        started, or settled if it has no attempts left. A job already finished (a child that
        settled its cancel and then ended itself, past the step it could not interrupt) needs
        nothing more. True: the original message is done."""
        signum, detail = lost_detail(text)
        with GUARD.database(), self._sessions()() as s:
            status = lease_store.settle_killed(
                s,
                job_id,
                f"{hostname}/{pid}/",
                signal=signum,
                detail=detail,
                limits=self._log_limits(),
            )
            s.commit()
            queue, settled = s.execute(
                select(Job.queue, Job.status).where(Job.id == job_id)
            ).one_or_none() or (None, None)
        if status is None and settled in FINISHED:
            log.info(
                "job %s: pool child %d ended %s after the job was %s", job_id, pid, detail, settled
            )
            return True
        if status is None:
            return False
        log.warning(
            "job %s: pool child %d died %s; run ended as killed (%s)", job_id, pid, detail, status
        )
        if status == JobStatus.queued.value:
            return send_job(self.celery, job_id, queue or "default", resumed=True)
        return True


@cache
def _main_sessions(url: str) -> sessionmaker[Session]:
    # Unpooled: no connection outlives a call, so a pool child never inherits one (SQLite's
    # per-process bookkeeping of an open connection is shared with the child's own connections).
    return make_sessionmaker(make_engine(url, pooled=False))


def _gate(app: TasCelery) -> Gate:
    """The gate for the worker's app (Celery hands the app to the strategy and to each request)."""
    return Gate(partial(_main_sessions, app.settings.resolved_database_url), app)


def _job_id(message: Any) -> str | None:
    try:
        args = message.decode()[0]
        return str(args[0])
    except Exception:  # not ours to judge: the pool child's task reports a malformed message
        return None


def job_strategy(task: Any, app: TasCelery, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
    """Celery's own strategy for `tas.run_job`, behind the gate (Celery calls this once per task
    type in the main process; what it returns handles every message of that type)."""
    handle = default_strategy(task, app, consumer, **kwargs)
    errors = consumer.connection_errors
    gate = _gate(app)

    def on_message(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any) -> Any:
        job_id = _job_id(message)
        if PREEMPT.shutting_down:
            log.info("worker stopping: message for job %s handed back to the broker", job_id)
            reject(log, errors, True)
            return None
        if job_id is not None:
            try:
                why = gate.drop_reason(job_id)
            except Exception:  # the database is down: the child's claim will judge (and retry)
                log.exception("gate: could not read job %s; dispatching", job_id)
                why = None
            if why is not None:
                log.info("dropped message for job %s: %s", job_id, why)
                ack(log, errors)
                return None
        log.info("dispatching job %s to a pool child", job_id)
        return handle(message, body, ack, reject, callbacks)

    return on_message


class JobRequest(Request):
    """A `tas.run_job` request in the main process: a pool child lost under it ends its run as
    `killed` (with the signal) at once rather than when its lease expires, and one the pool's
    start watchdog gave up on (no child started it) goes back to the broker."""

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, JobNotStarted):
            # What Celery does for a worker lost before it accepted the task (the message goes
            # back to the broker), without its error log and traceback: the pool said why.
            job_id = (self.args or ["?"])[0]
            log.warning("job %s: %s; its message goes back to the broker", job_id, exc)
            task_ready(self)
            self.reject(requeue=True)
            return None
        if isinstance(exc, WorkerLostError) and self._child_lost(str(exc)):
            return None
        return super().on_failure(
            exc_info, send_failed_event=send_failed_event, return_ok=return_ok
        )

    def _child_lost(self, text: str) -> bool:
        pid = getattr(self, "worker_pid", None)
        args = self.args or []
        if not pid or not args:
            return False
        try:
            handled = _gate(self.task.app).child_lost(str(args[0]), self.hostname, int(pid), text)
        except Exception:  # fall back to Celery's requeue; the lease runs out and says so
            log.exception("could not settle job %s after its pool child died", args[0])
            return False
        if handled:
            task_ready(self)
            self.acknowledge()
        return handled


@worker_shutting_down.connect
def _stop_claiming(**_: object) -> None:
    """Warm shutdown began (SIGTERM or SIGINT to the worker): running jobs checkpoint and go back
    to the queue, and nothing new is claimed. Runs in the main process's signal handler: one
    write to shared memory."""
    PREEMPT.stop_worker()

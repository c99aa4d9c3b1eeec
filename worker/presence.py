"""The worker's row in `workers`: registered when Celery says the worker is ready, refreshed by a
heartbeat thread, `draining` from the moment a warm shutdown begins, `offline` when it ends.

All of it runs in the worker's main process (the pool children fork from it and never touch
CUDA or this row). The heartbeat is a thread, so that a job run in-process (the solo pool) does
not silence it; each beat is a database section of `worker.forkguard`, which a fork waits for,
so a pool child never inherits a database driver's lock held mid-write by this thread. The thread
uses its own engine without a pool: no connection outlives a beat, so none is inherited by a
child."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from celery.signals import (
    celeryd_after_setup,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from sqlalchemy.orm import Session, sessionmaker

from tas.settings import Settings
from tas.store import engine as db_engine
from tas.store import workers
from worker import machine
from worker.forkguard import GUARD

log = logging.getLogger(__name__)

_AT_FORK_REGISTERED = False


def _after_fork_in_child() -> None:
    global _presence
    _presence = None  # the child has no heartbeat thread; the row is the main process's


def _register_at_fork() -> None:
    global _AT_FORK_REGISTERED
    if not _AT_FORK_REGISTERED and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _AT_FORK_REGISTERED = True


def _sessions(url: str) -> sessionmaker[Session]:
    return db_engine.make_sessionmaker(db_engine.make_engine(url, pooled=False))


#: How often a draining worker looks whether its last job has settled.
DRAIN_POLL_S = 0.1


def _celery_busy() -> bool:
    from celery.worker import state

    return bool(state.active_requests)


class Presence:
    """One worker's row and its heartbeat thread."""

    def __init__(
        self,
        settings: Settings,
        info: workers.WorkerInfo,
        sessions: sessionmaker[Session],
        busy: Callable[[], bool] = _celery_busy,
    ) -> None:
        self.settings = settings
        self.info = info
        self.sessions = sessions
        self.busy = busy
        self.status = workers.ONLINE
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tas-worker-presence", daemon=True)

    def start(self) -> None:
        """Register now (GET /workers lists the worker as soon as it is ready), then beat."""
        _register_at_fork()
        self._write(first=True)
        self._thread.start()
        log.info(
            "worker %s registered: queues %s, devices %s",
            self.info.id,
            ", ".join(self.info.queues),
            ", ".join(d["id"] for d in self.info.devices),
        )

    def draining(self) -> None:
        """Called from Celery's signal handler: only flags and wakes the thread (no I/O here)."""
        self.status = workers.DRAINING
        self._wake.set()

    def stop(self, timeout: float = 3.0) -> None:
        """Mark the row offline (written by the thread, waited for at most `timeout`: a database
        that does not answer must not hold the worker's exit)."""
        self.status = workers.OFFLINE
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        """Beat every interval. While draining, look often: once no job runs the worker is
        offline, and it says so then (its process may end moments later without Celery's own
        shutdown signal: the shutdown watchdog exits as soon as the jobs have settled)."""
        written = self.status
        due = time.monotonic() + self.settings.worker_heartbeat_s
        while True:
            draining = self.status == workers.DRAINING
            self._wake.wait(DRAIN_POLL_S if draining else max(0.0, due - time.monotonic()))
            self._wake.clear()
            if self.status == workers.DRAINING and not self.busy():
                self.status = workers.OFFLINE
                self._stopping = True
            if self.status != written or time.monotonic() >= due or self._stopping:
                written = self.status
                due = time.monotonic() + self.settings.worker_heartbeat_s
                self._write()
            if self._stopping:
                return

    def _write(self, first: bool = False) -> None:
        try:
            with GUARD.database(), self.sessions() as s:
                if first:
                    workers.forget_old(s, older_than_s=self.settings.worker_forget_s)
                    workers.register(s, self.info, status=self.status)
                else:
                    workers.beat(s, self.info, self.status)
                s.commit()
        except Exception:  # the database is away: the next beat tries again
            log.warning("worker heartbeat could not be written", exc_info=True)


_presence: Presence | None = None


def _consumed_queues(consumer: Any) -> list[str]:
    return sorted(consumer.app.amqp.queues.consume_from or {})


@celeryd_after_setup.connect
def _keep_servable_queues(sender: str, instance: Any, **_: Any) -> None:
    """However the worker was started (`tas worker`, or `celery worker -Q ...` directly), it does
    not consume a queue this machine cannot serve."""
    queues = instance.app.amqp.queues
    requested = list(queues.consume_from or {})
    servable = machine.servable_queues(requested, machine.detect_machine().devices)
    for q, why in servable.dropped.items():
        log.warning("not consuming queue %r: %s", q, why)
    if servable.dropped and servable.queues:
        queues.deselect(list(servable.dropped))
    elif servable.dropped:
        log.error("no queue left that this worker can serve; it will take no job")
        queues.deselect(list(servable.dropped))


@worker_ready.connect
def _on_ready(sender: Any, **_: Any) -> None:
    global _presence
    settings: Settings = sender.app.settings  # the worker's TasCelery app
    this = machine.detect_machine()
    controller = getattr(sender, "controller", None)
    info = workers.WorkerInfo(
        id=str(sender.hostname),
        hostname=socket.gethostname(),
        pid=os.getpid(),
        queues=_consumed_queues(sender),
        devices=this.devices,
        capacity=this.capacity,
        concurrency=int(getattr(controller, "concurrency", None) or 1),
    )
    _presence = Presence(settings, info, _sessions(settings.resolved_database_url))
    _presence.start()


@worker_shutting_down.connect
def _on_shutting_down(**_: Any) -> None:
    if _presence is not None:
        _presence.draining()


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    global _presence
    if _presence is not None:
        _presence.stop()
        _presence = None

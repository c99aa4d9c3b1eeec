"""The prefork pool: the next child ready before the next message, and no job left unstarted.

Every job runs in a fresh pool child (one task per child: a CUDA context and a job's memory never
outlive it). On the embedded broker Celery uses billiard's threaded pool, whose supervisor looks
for exited children every 0.8 s, so each job after the first waited most of that for its child.
This supervisor looks every few milliseconds; the child it forks from the main process already
has torch and the job code imported, and connects to the database before any message arrives.
On Redis Celery's event-loop pool replaced an exited child only on its 5 s maintenance timer (or
when the next message came): measured, a job waited 0.9 s p50 and up to 3.8 s for its child.
Both pools now replace it within 10 ms.

The start watchdog. A job handed to the pool is started by a child that takes it and
acknowledges it to the main process. A child that never gets that far holds the job, or the slot,
for ever: one forked while the main process was inside a database call never reached the
database (see worker/forkguard.py, which now prevents that), and a child stopped or killed while
reading the threaded pool's shared job queue leaves the queue's read lock taken, so no other child
can read it. Each child therefore keeps a row in shared memory (`ChildSlots`): starting, waiting
for a job, holding job N, running job N. Every fraction of `start_timeout_s` the pool looks, and:

- a child still starting after `start_timeout_s` is killed; its replacement takes the job, which
  is still in the queue;
- a job dispatched `start_timeout_s` ago that no child runs:
  - a child took it from the queue but never started it: that child is killed and the job goes
    back to the broker (a lost worker for Celery: the task rejects with requeue);
  - children sit waiting with the job unread in the queue (the queue's read lock is held by a
    stopped or dead process): they are killed, the lock is freed, and fresh children read it;
  - every child is busy with another job: it goes back to the broker, and a child that later
    finds it in the queue skips it.
  On the event-loop pool (Redis) each child has its own pipe: the child the job was written to is
  killed, and the pool sends the job to a fresh one (billiard's own recovery for a child lost
  before it acknowledged a job).

A job is never run twice at once by this: a child is killed only when its row says it has not
started the job, and the database claim fences any duplicate delivery anyway."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from billiard import pool as billiard_pool
from billiard.common import restart_state
from billiard.einfo import ExceptionInfo
from billiard.exceptions import RestartFreqExceeded, WorkerLostError
from billiard.process import current_process
from celery.concurrency import asynpool, prefork

from tas.settings import Settings

log = logging.getLogger(__name__)

#: How often the supervisor replaces exited children (seconds).
REPLACE_EVERY_S = 0.01

#: How long a dispatched job may wait for a child to start it when the app has no settings.
DEFAULT_START_TIMEOUT_S = 30.0

#: A killed child's exit is awaited at most this long before the pool reads its last row.
KILL_WAIT_S = 2.0

# A child's phases, as its row in ChildSlots says (0: no row yet).
STARTING, WAITING, RECEIVED, RUNNING = 1, 2, 3, 4
_PHASES = {STARTING: "starting", WAITING: "waiting", RECEIVED: "received", RUNNING: "running"}


class JobNotStarted(WorkerLostError):
    """A job handed to the pool that no child started within the bound. Celery treats it as a lost
    worker: the task (acks late, reject on worker lost) hands its message back to the broker."""


@dataclass(frozen=True)
class Slot:
    phase: int
    since: float  # time.monotonic() of the phase's start (one clock for every process)
    job: int  # billiard's job number, -1 for none


class ChildSlots:
    """One row per pool index, in memory shared with the pool's children (all forked after it was
    made): the phase of the child at that index, since when, and the job it took; and the last
    jobs handed back to the broker, which a child that still finds one in the queue must skip.
    Each field is written by one process at a time (the main process before the fork, the child
    after), so a reader sees at worst a row mid-update, and acts only on rows older than a bound."""

    WITHDRAWN = 64

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._cells = multiprocessing.RawArray(ctypes.c_double, rows * 3)
        self._withdrawn = multiprocessing.RawArray(ctypes.c_double, [-1.0] * self.WITHDRAWN)
        self._next = multiprocessing.RawValue(ctypes.c_long, 0)

    def set(self, index: int, phase: int, job: int = -1, now: float | None = None) -> None:
        if 0 <= index < self.rows:
            base = index * 3
            self._cells[base + 2] = job
            self._cells[base + 1] = time.monotonic() if now is None else now
            self._cells[base] = phase

    def get(self, index: int) -> Slot:
        if not 0 <= index < self.rows:
            return Slot(0, 0.0, -1)
        base = index * 3
        c = self._cells
        return Slot(int(c[base]), float(c[base + 1]), int(c[base + 2]))

    def withdraw(self, job: int) -> None:
        n = self._next.value
        self._withdrawn[n % self.WITHDRAWN] = job
        self._next.value = n + 1

    def withdrawn(self, job: int) -> bool:
        return float(job) in self._withdrawn[:]


class _Reporting:
    """A pool child that keeps its row of the pool's ChildSlots (mixed into billiard's Worker, or
    Celery's event-loop one, on a class the pool makes with its own `slots`)."""

    slots: ChildSlots
    wait_for_job: Callable[[], Any]

    def on_loop_start(self, pid: int) -> None:
        super().on_loop_start(pid)  # type: ignore[misc]
        self.slots.set(current_process().index, WAITING)

    def _make_child_methods(self, *args: Any, **kwargs: Any) -> None:
        super()._make_child_methods(*args, **kwargs)  # type: ignore[misc]
        receive = self.wait_for_job
        slots, index = self.slots, current_process().index

        def wait_for_job() -> Any:
            slots.set(index, WAITING)
            req = receive()
            if not req:
                return req
            type_, (job, i, fun, args, kwargs) = req
            slots.set(index, RECEIVED, job)
            if slots.withdrawn(job):
                return None  # handed back to the broker while it sat in the queue: not ours

            def started(*a: Any, **kw: Any) -> Any:
                # Called after the child acknowledged the job to the main process.
                slots.set(index, RUNNING, job)
                return fun(*a, **kw)

            return type_, (job, i, started, args, kwargs)

        self.wait_for_job = wait_for_job


class _BlockingWorker(_Reporting, billiard_pool.Worker):
    pass


class _AsynWorker(_Reporting, asynpool.Worker):
    pass


def _kill(proc: Any) -> None:
    # Controlled: billiard logs no "exited with signal 9" error (the watchdog said why). Not
    # `_job_terminated`: a job the child turns out to have accepted is then a lost worker's (its
    # message requeued), never a revoked one.
    proc._controlled_termination = True
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)


def _await_exit(procs: list[Any]) -> None:
    deadline = time.monotonic() + KILL_WAIT_S
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))


class _Watched:
    """The start watchdog's part common to both pools (mixed in ahead of billiard's Pool)."""

    ChildWorker: type
    _pool: list[Any]
    _cache: dict[int, Any]
    _state: int

    def __init__(
        self,
        processes: int | None = None,
        *args: Any,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        self._watch(processes, start_timeout_s)
        super().__init__(processes, *args, **kwargs)  # type: ignore[call-arg]  # billiard's Pool

    def _watch(self, processes: int | None, start_timeout_s: float) -> None:
        self.start_timeout_s = start_timeout_s
        self.check_every_s = min(1.0, max(0.05, start_timeout_s / 4))
        self.slots = ChildSlots(max(processes if processes is not None else os.cpu_count() or 1, 1))
        # billiard makes each child's Worker from `self.Worker`: this one reports to our slots.
        self.Worker = type("Worker", (self.ChildWorker,), {"slots": self.slots})
        self._recovered_at = 0.0

    def _create_worker_process(self, i: int) -> Any:
        self.slots.set(i, STARTING)
        return super()._create_worker_process(i)  # type: ignore[misc]

    def apply_async(self, *args: Any, **kwargs: Any) -> Any:
        result = super().apply_async(*args, **kwargs)  # type: ignore[misc]
        if result is not None:
            result._tas_dispatched_at = time.monotonic()
        return result

    def check_starts(self) -> None:
        """One look for children stuck while starting and for dispatched jobs no child started."""
        if getattr(self, "_state", None) != billiard_pool.RUN:
            return
        try:
            self._check_starts(time.monotonic())
        except Exception:  # the next look tries again; the pool must keep running
            log.exception("the pool's start watchdog failed")

    def _check_starts(self, now: float) -> None:
        bound = self.start_timeout_s
        rows = {w: self.slots.get(w.index) for w in list(self._pool) if w.exitcode is None}
        for w, row in rows.items():
            if row.phase == STARTING and now - row.since > bound:
                log.warning(
                    "pool child %d has been starting for %.0f s and has not yet been able to take"
                    " a job; killing it (a fresh child takes its place)",
                    w.pid,
                    now - row.since,
                )
                _kill(w)
                self._recovered_at = now
        for job in list(self._cache.values()):
            since = getattr(job, "_tas_dispatched_at", None)
            if since is None or job._accepted or job.ready():
                continue
            if now - max(since, self._recovered_at) <= bound:
                continue
            if any(r.phase == RUNNING and r.job == job._job for r in rows.values()):
                continue  # started: its acknowledgement is on its way to the main process
            holder = next(
                (w for w, r in rows.items() if r.phase == RECEIVED and r.job == job._job), None
            )
            self._recover(job, holder, rows, now)

    def _recover(self, job: Any, holder: Any, rows: dict[Any, Slot], now: float) -> None:
        raise NotImplementedError

    def _describe(self, job: Any, now: float) -> str:
        return f"task {job.correlation_id}, dispatched {now - job._tas_dispatched_at:.0f} s ago,"


class _Supervisor(billiard_pool.Supervisor):
    """billiard's supervisor (same start-up burst and restart-rate guard), polling faster, and
    running the pool's start watchdog."""

    def body(self) -> None:
        pool = self.pool
        next_check = 0.0

        def step(pause: float) -> None:
            nonlocal next_check
            pool._maintain_pool()
            if time.monotonic() >= next_check:
                pool.check_starts()
                next_check = time.monotonic() + pool.check_every_s
            time.sleep(pause)

        try:
            prev_state = pool.restart_state
            pool.restart_state = restart_state(10 * pool._processes, 1)
            for _ in range(10):
                if self._state == billiard_pool.RUN and pool._state == billiard_pool.RUN:
                    step(0.1)
            pool.restart_state = prev_state
            while self._state == billiard_pool.RUN and pool._state == billiard_pool.RUN:
                step(REPLACE_EVERY_S)
        except RestartFreqExceeded:
            pool.close()
            pool.join()
            raise


class _BlockingPool(_Watched, billiard_pool.Pool):
    """billiard's threaded pool (the embedded broker's): one job queue shared by the children."""

    Supervisor = _Supervisor
    ChildWorker = _BlockingWorker

    def _recover(self, job: Any, holder: Any, rows: dict[Any, Slot], now: float) -> None:
        what = self._describe(job, now)
        if holder is not None:
            log.warning(
                "%s was taken from the pool's queue by child %d, which never started it;"
                " killing the child",
                what,
                holder.pid,
            )
            _kill(holder)
            _await_exit([holder])
            self._hand_back(job, f"pool child {holder.pid} took it but never started it")
            return
        if any(r.phase == STARTING for r in rows.values()):
            return  # a child still starting (within the bound) takes it when it is ready
        idle = [w for w, r in rows.items() if r.phase == WAITING]
        if not idle:
            self._hand_back(job, "every pool child was busy with another job")
            return
        log.warning(
            "%s is still in the pool's queue while children %s wait for a job: the queue's read"
            " lock is held by a stopped or dead process; killing them and freeing the lock",
            what,
            [w.pid for w in idle],
        )
        for w in idle:
            _kill(w)
        _await_exit(idle)
        last = [self.slots.get(w.index) for w in idle]
        if any(r.phase == RECEIVED and r.job == job._job for r in last):
            # One of them took it after all, and died with it.
            self._hand_back(job, "the pool child that took it was killed before starting it")
            return
        # No live child reads the queue now (the children left run jobs, and with one job per
        # child never read it again; this supervisor forks the next ones after this returns), so
        # the lock is either free or held by a dead process: free it either way.
        lock = getattr(self._inqueue, "_rlock", None)
        if lock is not None and self._maxtasksperchild == 1:
            lock.acquire(False)
            lock.release()
        self._recovered_at = now

    def _hand_back(self, job: Any, why: str) -> None:
        self.slots.withdraw(job._job)  # a child that still finds it in the queue skips it
        job.discard()  # before the failure: an acknowledgement arriving now finds no job
        try:
            raise JobNotStarted(
                f"no pool child started it within {self.start_timeout_s:g} s: {why}"
            )
        except JobNotStarted:
            job._set(None, (False, ExceptionInfo()))
        putlock = getattr(self, "_putlock", None)
        if putlock is not None:  # the slot it held (no result will release it)
            putlock.release()


class _AsynPool(_Watched, asynpool.AsynPool):
    """Celery's event-loop pool (Redis): a pipe per child."""

    ChildWorker = _AsynWorker

    @property
    def timers(self) -> dict[Callable[[], None], float]:
        """The event loop's maintenance of the pool (reaping exited children, forking their
        replacements) every 10 ms instead of every 5 s, and the start watchdog."""
        return {self.maintain_pool: REPLACE_EVERY_S, self.check_starts: self.check_every_s}

    def _recover(self, job: Any, holder: Any, rows: dict[Any, Slot], now: float) -> None:
        proc = holder or job._write_to or job._scheduled_for
        phase = rows[proc].phase if proc in rows else 0
        if proc is not None and proc.exitcode is None and phase != RUNNING:
            log.warning(
                "%s was sent to pool child %d, which never started it (%s); killing the child"
                " (the pool sends the job to a fresh one)",
                self._describe(job, now),
                proc.pid,
                _PHASES.get(phase, "unknown"),
            )
            _kill(proc)
            self._recovered_at = now
        elif not getattr(job, "_tas_warned", False):  # none, or one running another job
            job._tas_warned = True
            log.warning("%s has not been taken by a pool child yet", self._describe(job, now))


class TaskPool(prefork.TaskPool):
    """Celery's prefork pool whose children are replaced at once and whose dispatched jobs are
    watched until a child starts them (`worker_pool` names it)."""

    Pool = _AsynPool
    BlockingPool = _BlockingPool

    def on_start(self) -> None:
        settings = getattr(self.app, "settings", None)
        self.options["start_timeout_s"] = (
            settings.dispatch_start_timeout_s
            if isinstance(settings, Settings)
            else DEFAULT_START_TIMEOUT_S
        )
        super().on_start()

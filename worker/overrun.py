"""A cancel is bounded whatever the step: a one-process run that has seen a cancel (or lost its
lease) and whose training loop has not stopped within `TAS_CANCEL_GRACE_S` is ended from outside.

The loop reads the reporter's stop flag between steps, so a cancel normally waits for the step in
progress. One step can take minutes (a wide convolution on big images), as can an evaluation pass
or a stage that never reads the flag, and a kernel running in C++ cannot be interrupted from Python
(an exception raised in the loop's thread waits for the kernel to return). Ending the process is
the only bound. So, once the heartbeat has seen the stop, `StopWatchdog` gives the loop the grace
to take it (`should_stop` answered it, or the pipeline ended on its own); past it, `Overrun`:

- on a cancel: settles the run exactly as a cooperative cancel does (`worker.runner.stopped`: what
  the reporter holds flushed, the job `cancelled`, its open stage ended `cancelled`, the attempt
  log's entry, all fenced by the lease), from the watchdog's thread on a session of its own, and
  says in the job's log and the worker's that the step was abandoned;
- on a lost lease: writes nothing (another run owns the job);

then ends the pool child with `os._exit`: no cleanup runs in it, since the job's thread is still
inside the step. The pool replaces the child; the worker's main process finds the job already
settled (so the dead child changes nothing) and acknowledges its message: nothing is left to
run (a redelivered one would be dropped anyway, and a claim refused: it is fenced).

Only a pool child is ended (the pool replaces it). Any other process (a test calling the runner)
is left alone: the run is settled, the step runs on, and the loop then finds its lease gone and
writes nothing. A preemption is not watched here: it has its own grace, the worker's
(`TAS_WORKER_STOP_GRACE_S`), and a data-parallel group is bounded by its launcher
(`TAS_DISTRIBUTED_STOP_GRACE_S`)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from billiard.process import current_process

from worker.joblog import JobLogBuffer

log = logging.getLogger(__name__)

#: The exit status of a pool child ended by `Overrun` (EX_TEMPFAIL: the run was ended on purpose;
#: the worker's log names the job and why just before it).
EXIT_STATUS = 75

#: The stops the watchdog bounds (a preemption has its own grace).
WATCHED = ("cancelled", "lease_lost")


def in_pool_child() -> bool:
    """Whether this process is a pool child, which its pool replaces when it exits (billiard gives
    each one its index in the pool; no other process has one)."""
    return getattr(current_process(), "index", None) is not None


class StopWatchdog:
    """Arms when the heartbeat sees a stop, fires `overrun(reason)` once if the loop has not taken
    it `grace_s` later. `honoured()` disarms it for good: the loop is stopping by itself, or the
    run is over."""

    def __init__(self, grace_s: float, overrun: Callable[[str], Any]) -> None:
        self.grace_s = grace_s
        self._overrun = overrun
        self._honoured = threading.Event()
        self._lock = threading.Lock()
        # Held while the overrun ends the run, and by `honoured`: the job's thread, once its
        # pipeline has ended, cannot go on to hand its result to the pool (a write to a queue
        # shared with every child, under that queue's lock) while this thread ends the process,
        # which would leave the lock held by a dead process. Re-entrant: ending the run closes
        # the reporter, which says the loop has ended.
        self._ending = threading.RLock()
        self.thread: threading.Thread | None = None

    def arm(self, reason: str) -> None:
        """A stop the loop has to take (the first one counts; later ones change nothing)."""
        if reason not in WATCHED:
            return
        with self._lock:
            if self.thread is not None or self._honoured.is_set():
                return
            self.thread = threading.Thread(
                target=self._watch, args=(reason,), name="tas-stop-watchdog", daemon=True
            )
            self.thread.start()

    def honoured(self) -> None:
        with self._ending:
            self._honoured.set()

    def _watch(self, reason: str) -> None:
        if self._honoured.wait(self.grace_s):
            return
        with self._ending:
            if self._honoured.is_set():
                return  # taken between the wait and the lock
            try:
                self._overrun(reason)
            except Exception:  # nothing left to try from here: the lease, or the reaper, settles it
                log.exception("ending a run that did not stop within %.1f s failed", self.grace_s)


@dataclass
class Overrun:
    """What ends a run whose loop did not take its stop within the grace (see the module's
    docstring). `cancel` settles the run as a cooperative cancel would and returns the status it
    wrote ("skipped" when the lease was no longer this run's); `cleanup` removes the run's files
    that only its own ending would have removed; `exit` ends the process (None: not a pool child,
    left running)."""

    job_id: str
    grace_s: float
    logbook: JobLogBuffer
    cancel: Callable[[], str]
    cleanup: Callable[[], None]
    exit: Callable[[int], Any] | None

    def __call__(self, reason: str) -> None:
        ending = "ending its pool process" if self.exit is not None else "the step runs on"
        if reason == "cancelled":
            self.logbook.add(
                f"cancel: the step in progress did not end within {self.grace_s:g} s"
                f" (TAS_CANCEL_GRACE_S); the run is ended without it, {ending}",
                level="warning",
            )
            status = self.cancel()
            log.warning(
                "job %s: the step in progress did not end within %.1f s of the cancel; settled"
                " as %s, %s (the step is abandoned)",
                self.job_id,
                self.grace_s,
                status,
                ending,
            )
        else:
            log.warning(
                "job %s: lost its lease (another run owns it) and the step in progress did not"
                " end within %.1f s; nothing written, %s",
                self.job_id,
                self.grace_s,
                ending,
            )
        if self.exit is None:
            return
        try:
            self.cleanup()
        except Exception:
            log.exception("files of job %s's run not removed", self.job_id)
        _flush_logs()
        self.exit(EXIT_STATUS)


def _flush_logs() -> None:
    """os._exit skips the flushing a normal exit does: what was logged must reach the log first."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def hard_exit() -> Callable[[int], Any] | None:
    """`os._exit` in a pool child, None elsewhere (see `in_pool_child`)."""
    return os._exit if in_pool_child() else None

"""The embedded worker's tie to the `tas serve` process that started it.

`tas serve` owns its worker: the worker must never outlive it, whatever ends the server (Ctrl-C,
SIGTERM, a crash, SIGKILL). Three pieces make that hold without trusting any one of them:

- the kernel: the worker's main process asks for SIGTERM when its parent dies (PR_SET_PDEATHSIG,
  set in the child between fork and exec by `tas serve`), so even a SIGKILLed server stops it;
- a watchdog: once a warm shutdown begins, the worker has a bounded grace to checkpoint and leave;
  past it, it SIGKILLs its pool children and exits (Celery's warm shutdown has been seen to hang in
  a futex, ignoring further SIGTERMs);
- a readiness pipe: the worker writes one line when it consumes, so `tas serve` can tell the user
  the worker is ready instead of printing Celery's banner.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from tas.proc import children_of

log = logging.getLogger(__name__)


def install(*, ready_fd: int | None, grace_s: float) -> None:
    """Connect the readiness pipe and the shutdown watchdog to this worker's signals."""

    @worker_ready.connect(weak=False)
    def _ready(**_: object) -> None:
        if ready_fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)

    @worker_shutting_down.connect(weak=False)
    def _arm(**_: object) -> None:
        threading.Thread(
            target=_finish_within, args=(grace_s,), name="tas-shutdown-watchdog", daemon=True
        ).start()


#: Once the running jobs have settled, how long Celery gets to finish its own shutdown.
_SETTLE_S = 1.5


def _finish_within(grace_s: float) -> None:
    """Bound the warm shutdown. Every job a task runs is settled in the database (checkpointed
    and handed back, or finished) before its task returns, so once no task is running there is
    nothing left to save: Celery gets a moment to close cleanly (acks, broker connection), then
    the pool and this process end. The prefork pool's shutdown has been seen waiting five seconds
    and more for results that never come; and if a job does not settle within the grace, its
    lease expires and it resumes elsewhere from its last checkpoint."""
    from celery.worker import state

    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and state.active_requests:
        time.sleep(0.1)
    drained = not state.active_requests
    time.sleep(min(_SETTLE_S, max(0.0, deadline - time.monotonic())) if drained else 0.0)
    kids = children_of(os.getpid())
    if drained:
        log.info("jobs settled; ending the worker (%d pool process(es))", len(kids))
    else:
        log.warning(
            "worker shutdown exceeded %.0f s; killing %d pool process(es) and exiting",
            grace_s,
            len(kids),
        )
    for pid in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # What Celery would have told its handlers at the end of a clean shutdown (the worker's row
    # goes offline, for one): said here because this exit comes first.
    with contextlib.suppress(Exception):
        worker_shutdown.send(sender=None)
    os._exit(0 if drained else 1)

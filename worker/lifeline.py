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

from celery.signals import worker_ready, worker_shutting_down

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
        timer = threading.Timer(grace_s, _expire, args=(grace_s,))
        timer.daemon = True
        timer.start()


def _expire(grace_s: float) -> None:
    """The warm shutdown took longer than its grace: the running jobs' checkpoints had their
    chance (their leases expire and they resume elsewhere); end the pool and this process now."""
    me = os.getpid()
    kids = children_of(me)
    log.warning(
        "worker shutdown exceeded %.0f s; killing %d pool process(es) and exiting",
        grace_s,
        len(kids),
    )
    for pid in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os._exit(1)

"""The worker that `tas serve` runs beside its API, and owns.

The worker runs as a child process in its own process group, so a Ctrl-C at the terminal reaches
only `tas serve`, which then stops the worker exactly once (a second signal would turn Celery's warm
shutdown, where the running job checkpoints, into a cold one). The kernel stops it if the server
dies without a word (PR_SET_PDEATHSIG), and a stop that overruns its grace ends with SIGKILL to the
whole group, pool children included: when `tas serve` exits, nothing it started is left running."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial

from tas.proc import alive, descendants, die_with_parent

log = logging.getLogger(__name__)


class EmbeddedWorker:
    def __init__(
        self,
        *,
        queues: str,
        concurrency: int,
        grace_s: float,
        on_ready: Callable[[int], None] | None = None,
    ) -> None:
        self.queues = queues
        self.concurrency = concurrency
        self.grace_s = grace_s
        self.on_ready = on_ready
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop_sent_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tas",
                "worker",
                "--concurrency",
                str(self.concurrency),
                "--queues",
                self.queues,
                "--embedded",
                "--ready-fd",
                str(write_fd),
                "--stop-grace",
                str(self.grace_s),
            ],
            env=os.environ.copy(),
            pass_fds=(write_fd,),
            process_group=0,
            preexec_fn=partial(die_with_parent, os.getpid()),
        )
        os.close(write_fd)
        threading.Thread(
            target=self._await_ready, args=(read_fd,), name="tas-worker-ready", daemon=True
        ).start()

    def _await_ready(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as pipe:
            line = pipe.readline()
        if line.strip() == b"ready" and self.on_ready is not None and self.pid is not None:
            self.on_ready(self.pid)

    def request_stop(self) -> None:
        """Begin the worker's warm shutdown (its running jobs checkpoint and go back to the
        queue). Safe to call from a signal handler and more than once: one SIGTERM is sent."""
        if self.proc is None or self.proc.poll() is not None or self._stop_sent_at is not None:
            return
        self._stop_sent_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Stop and wait: SIGTERM, then after the grace SIGKILL to the worker's whole group.
        Returns only when no process of the worker is left."""
        if self.proc is None:
            return
        self.request_stop()
        started = self._stop_sent_at or time.monotonic()
        tree = [self.proc.pid, *descendants(self.proc.pid)]
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=max(0.0, started + self.grace_s - time.monotonic()))
        if self.proc.poll() is None or any(alive(p) for p in tree):
            log.warning("embedded worker did not stop within %.0f s; killing it", self.grace_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            for pid in tree:  # a pool child that left the group still goes
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait()

"""A running job's log, buffered in memory and written with the reporter's periodic flush.

Writers (the reporter's stage and epoch hooks, the runner, and the `logging` records and Python
warnings raised by the job's own thread while it runs) only append to a bounded list under a
lock; the heartbeat thread writes the list in its one transaction per interval. So logging never
waits on the database or fails the job: a flush that fails puts its lines back for the next one,
and a buffer that the database cannot drain keeps its first lines and counts the rest."""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import TextIO

from tas.store.logs import Level, LogLine

log = logging.getLogger(__name__)

#: Lines held in memory at most while the database cannot take them.
MAX_PENDING = 2000

_FORMATTER = logging.Formatter()

#: Loggers whose INFO lines are the training's own (the core's); every logger's warnings count.
JOB_LOGGERS = ("tas.core",)


def _level(levelno: int) -> Level:
    if levelno >= logging.ERROR:
        return "error"
    return "warning" if levelno >= logging.WARNING else "info"


class JobLogBuffer:
    """The lines of one run of one job not yet written. Thread-safe; `add` never blocks on I/O."""

    def __init__(self, attempt: int, worker: str | None, *, max_pending: int = MAX_PENDING) -> None:
        self.attempt = attempt
        self.worker = worker
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._lines: list[LogLine] = []
        self._dropped = 0
        #: Set once the job's log is at its bound: nothing more is kept.
        self.full = False

    def add(self, message: str, *, level: Level = "info", source: str = "worker") -> None:
        if self.full:
            return
        line = LogLine(message, level, source, self.attempt, self.worker)
        with self._lock:
            if len(self._lines) >= self.max_pending:
                self._dropped += 1
            else:
                self._lines.append(line)

    def drain(self) -> list[LogLine]:
        """Everything pending (and a line counting what the buffer had to drop), now owned by the
        caller: on a failed write it hands them back with `restore`."""
        with self._lock:
            lines, self._lines = self._lines, []
            dropped, self._dropped = self._dropped, 0
        if dropped:
            lines.append(
                LogLine(
                    f"{dropped} log lines dropped: the database did not take them in time",
                    "warning",
                    "worker",
                    self.attempt,
                    self.worker,
                )
            )
        return lines

    def restore(self, lines: list[LogLine]) -> None:
        """Put back lines a flush could not write, ahead of those added since, within the bound."""
        with self._lock:
            merged = lines + self._lines
            self._dropped += max(0, len(merged) - self.max_pending)
            self._lines = merged[: self.max_pending]

    def written(self, still_open: bool) -> None:
        """What the store said after a write: False once the job's log is at its bound."""
        if not still_open:
            self.full = True
            with self._lock:
                self._lines, self._dropped = [], 0


class JobLogHandler(logging.Handler):
    """Buffers the records of the job's thread: WARNING and above from any logger but the
    worker's own, INFO from the core's loggers (`JOB_LOGGERS`). Records of other threads (the
    heartbeat's, another job's in a threaded worker) are not this job's."""

    def __init__(self, buffer: JobLogBuffer, thread: int) -> None:
        super().__init__(logging.INFO)
        self.buffer = buffer
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        # py.warnings: a warning `capture` has already taken (when logging captures warnings);
        # the worker's own loggers: the runner writes what a run's log needs of them itself.
        if record.thread != self.thread or record.name == "py.warnings":
            return False
        if record.name.startswith("worker."):
            return False
        if record.levelno >= logging.WARNING:
            return True
        return any(record.name == n or record.name.startswith(n + ".") for n in JOB_LOGGERS)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + _FORMATTER.formatException(record.exc_info)
            source = "train" if record.name.startswith("tas.core") else "worker"
            self.buffer.add(message, level=_level(record.levelno), source=source)
        except Exception:  # never let the job's log fail the job
            self.handleError(record)


@contextlib.contextmanager
def capture(buffer: JobLogBuffer) -> Iterator[None]:
    """While the job runs in this thread: its log records and its Python warnings also go to
    `buffer` (they still reach the worker's own log as before)."""
    thread = threading.get_ident()
    handler = JobLogHandler(buffer, thread)
    root = logging.getLogger()
    core = [logging.getLogger(name) for name in JOB_LOGGERS]
    # The core's INFO lines must get past their loggers' own level to reach the handler.
    levels = [lg.level for lg in core]
    for lg in core:
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    previous = warnings.showwarning

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if threading.get_ident() == thread:
            with contextlib.suppress(Exception):
                buffer.add(
                    f"{category.__name__}: {message} ({filename}:{lineno})",
                    level="warning",
                    source="train",
                )
        previous(message, category, filename, lineno, file, line)

    root.addHandler(handler)
    warnings.showwarning = showwarning
    try:
        yield
    finally:
        root.removeHandler(handler)
        if warnings.showwarning is showwarning:
            warnings.showwarning = previous
        for lg, level in zip(core, levels, strict=True):
            lg.setLevel(level)

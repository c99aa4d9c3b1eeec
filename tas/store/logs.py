"""A job's log: the lines its runs write (stages, warnings, the training's own lines, a failure's
traceback, a resume), read back in order from a cursor.

A line's `id` is the cursor: `list_logs(after=id)` answers the lines written since, so a follower
(`GET /jobs/{id}/logs?after=`, the event stream) neither skips nor repeats one: a job's lines are
written by one writer at a time (its run's flushes, serialised; the API and the reaper only while
no run holds it), so they commit in the order of their ids. Each job's log is
bounded: `append_logs` keeps at most `max_lines` lines, the last of them saying the log was
truncated, and each line at most `max_line_bytes` (a longer one keeps its head and its tail, where
a traceback names the exception, with a marker in between)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from tas.settings import Settings
from tas.store.orm import JobLog, utcnow

Level = Literal["info", "warning", "error"]

#: What the `source` column says wrote a line.
SOURCES = ("stage", "train", "worker", "api", "reaper")

#: The message of the line that ends a log cut at its bound (nothing is written after it).
TRUNCATED = "log truncated: this job wrote more than {max_lines} lines (TAS_JOB_LOG_MAX_LINES)"

#: Lines `list_logs` answers at most per call.
MAX_PAGE = 1000


@dataclass(frozen=True)
class LogLimits:
    """A job's log bounds (TAS_JOB_LOG_MAX_LINES, TAS_JOB_LOG_MAX_LINE_BYTES; their defaults)."""

    max_lines: int = 10_000
    max_line_bytes: int = 8192

    @classmethod
    def of(cls, settings: Settings) -> LogLimits:
        return cls(settings.job_log_max_lines, settings.job_log_max_line_bytes)


@dataclass(frozen=True)
class LogLine:
    """One line as a writer hands it over (the row's id is given when it is written)."""

    message: str
    level: Level = "info"
    source: str = "worker"
    attempt: int = 0
    worker: str | None = None
    created_at: datetime = field(default_factory=utcnow)


def clip(message: str, max_bytes: int) -> str:
    """`message` within `max_bytes` of UTF-8: a longer one keeps its head and its tail (a
    traceback's last line names the exception) around a marker saying how much was cut."""
    data = message.encode("utf-8")
    if len(data) <= max_bytes:
        return message
    marker_room = 64
    keep = max(max_bytes - marker_room, 2)
    head, tail = data[: keep // 2], data[len(data) - keep // 2 :]
    cut = len(data) - len(head) - len(tail)
    return (
        head.decode("utf-8", errors="ignore")
        + f"\n… [{cut} bytes cut: TAS_JOB_LOG_MAX_LINE_BYTES] …\n"
        + tail.decode("utf-8", errors="ignore")
    )


def count_logs(session: Session, job_id: str) -> int:
    return int(session.scalar(select(func.count()).where(JobLog.job_id == job_id)) or 0)


def append_logs(
    session: Session,
    job_id: str,
    lines: Sequence[LogLine],
    *,
    max_lines: int,
    max_line_bytes: int,
) -> bool:
    """Add `lines` to the job's log (the caller commits). The log keeps `max_lines` lines at most:
    the lines past `max_lines - 1` are dropped and one `TRUNCATED` line takes their place, once.
    False when the log is full (nothing more will be written: a writer can stop buffering)."""
    if not lines:
        return True
    have = count_logs(session, job_id)
    if have >= max_lines:
        return False
    room = max_lines - 1 - have
    kept = list(lines[:room])
    full = len(lines) > room
    rows = [
        {
            "job_id": job_id,
            "created_at": line.created_at,
            "attempt": line.attempt,
            "worker": line.worker,
            "level": line.level,
            "source": line.source,
            "message": clip(line.message, max_line_bytes),
        }
        for line in kept
    ]
    if full:
        last = lines[-1]
        rows.append(
            {
                "job_id": job_id,
                "created_at": utcnow(),
                "attempt": last.attempt,
                "worker": last.worker,
                "level": "warning",
                "source": last.source,
                "message": TRUNCATED.format(max_lines=max_lines),
            }
        )
    # An executemany in the lines' order: each line's id is above the one before it.
    session.execute(insert(JobLog), rows)
    return not full


def note(session: Session, job_id: str, attempt: int, message: str, limits: LogLimits) -> None:
    """One line the API writes about a job (no worker wrote it), in the caller's transaction."""
    line = LogLine(message, "info", "api", attempt, None)
    append_logs(
        session, job_id, [line], max_lines=limits.max_lines, max_line_bytes=limits.max_line_bytes
    )


def list_logs(
    session: Session, job_id: str, *, after: int | None = None, limit: int = MAX_PAGE
) -> list[JobLog]:
    """The job's lines after the cursor `after` (a line's id; None: from the first), oldest
    first, at most `limit` of them. One range scan of the (job_id, id) index."""
    if limit <= 0:
        return []
    q = select(JobLog).where(JobLog.job_id == job_id)
    if after is not None:
        q = q.where(JobLog.id > after)
    return list(session.scalars(q.order_by(JobLog.id).limit(min(limit, MAX_PAGE))))

"""A job's log as the API answers it: a page of lines and the cursor after it, as JSON or as
plain text (one line per line, a multi-line message such as a traceback indented under it)."""

from __future__ import annotations

from typing import Literal

from fastapi import Response
from sqlalchemy.orm import Session

from tas.store import logs as log_store
from tas.store.orm import JobLog

LogFormat = Literal["json", "text"]

#: The header a `format=text` answer carries its `next_after` cursor in.
NEXT_AFTER_HEADER = "X-Next-After"


def as_text(line: JobLog) -> str:
    when = line.created_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    who = f"run {line.attempt}" + (f" {line.worker}" if line.worker else "")
    head, *rest = line.message.splitlines() or [""]
    out = f"{when} {line.level.upper():<7} {line.source:<6} [{who}] {head}\n"
    return out + "".join(f"    {more}\n" for more in rest)


def job_log(
    session: Session, job_id: str, after: int | None, limit: int, fmt: LogFormat
) -> dict[str, object] | Response:
    lines = log_store.list_logs(session, job_id, after=after, limit=limit)
    next_after = lines[-1].id if lines else after
    if fmt == "text":
        headers = {NEXT_AFTER_HEADER: str(next_after)} if next_after is not None else {}
        return Response(
            "".join(as_text(line) for line in lines),
            media_type="text/plain; charset=utf-8",
            headers=headers,
        )
    return {"items": lines, "next_after": next_after}

"""What the API says about workers: the list, and a warning when a job is queued where no live
worker will take it."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from tas.settings import Settings
from tas.store import workers
from tas.store.keys import Principal
from tas.store.orm import Job, JobStatus

#: The read-time attribute the submit response shows (set on the Job instance, never stored).
WARNINGS = "warnings"


def listed(session: Session, settings: Settings, principal: Principal) -> list[dict[str, Any]]:
    """What a tenant needs to know of the fleet: whether a worker is live and what it can run
    (queues, devices, capacity), and its own jobs running there. Another tenant's running jobs
    are not counted, and the host name and pid, which serve an operator at the machine, are shown
    to `admin` keys alone (the worker's id is the name a tenant's jobs already show)."""
    running = workers.running_by_worker(session, tenant=principal.tenant)
    operator = "admin" in principal.scopes
    out = []
    for row, state in workers.listed(
        session, heartbeat_s=settings.worker_heartbeat_s, forget_s=settings.worker_forget_s
    ):
        out.append(
            {
                "id": row.id,
                "hostname": row.hostname if operator else None,
                "pid": row.pid if operator else None,
                "queues": row.queues,
                "devices": row.devices,
                "capacity": row.capacity,
                "concurrency": row.concurrency,
                "status": state,
                "live": state == workers.ONLINE,
                "running_jobs": running.get(row.id, 0),
                "started_at": row.started_at,
                "heartbeat_at": row.heartbeat_at,
            }
        )
    return out


def annotate(session: Session, jobs: list[Job], settings: Settings) -> None:
    """Each job's `waiting_for`, read now (one query for the list, none if nothing is queued)."""
    workers.annotate_waiting(session, jobs, heartbeat_s=settings.worker_heartbeat_s)


def annotate_view(conn: Connection, job: dict[str, Any], settings: Settings) -> None:
    """`annotate` for a job read as plain values (`job_store.job_view`), in the same
    transaction: no query unless it is queued."""
    job[workers.WAITING_FOR] = None
    if job["status"] == JobStatus.queued.value:
        with Session(bind=conn) as session:
            live = workers.live(session, heartbeat_s=settings.worker_heartbeat_s)
        job[workers.WAITING_FOR] = workers.waiting_reason(job["queue"], live)


def warn_if_unservable(session: Session, job: Job, settings: Settings, response: Response) -> None:
    """A job just queued where no live worker consumes its queue is accepted (a worker may come),
    but the response says so: in `warnings` and a `Warning` header."""
    annotate(session, [job], settings)
    waiting = getattr(job, workers.WAITING_FOR, None)
    notes = [waiting["reason"]] if waiting else []
    setattr(job, WARNINGS, notes)
    if notes:
        # a header is latin-1: a worker's non-ASCII host name must not turn the 201 into a 500
        text = notes[0].encode("ascii", "replace").decode().replace("\\", "\\\\")
        text = text.replace('"', '\\"')
        response.headers["Warning"] = f'199 tas "{text}"'

"""The `workers` table: who is consuming which queues, with which devices.

A worker registers itself (queues, devices, capacity) when it is ready and refreshes its row every
`worker_heartbeat_s`; a row whose heartbeat is older than three intervals is not live (its worker
was killed, or its machine is gone). The API reads the live rows to say, for a queued job that no
live worker consumes, what it is waiting for — instead of the job being claimed by a worker that
cannot run it and failing later."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from tas.store.orm import Job, JobStatus, Worker, utcnow

log = logging.getLogger(__name__)

ONLINE, DRAINING, OFFLINE, LOST = "online", "draining", "offline", "lost"
#: The read-time attribute JobOut shows (set on Job instances, never stored).
WAITING_FOR = "waiting_for"
#: A worker is live while its last heartbeat is within this many heartbeat intervals.
LIVE_INTERVALS = 3


# ---------------------------------------------------------------------------------------------
# The workers table


@dataclass(frozen=True)
class WorkerInfo:
    id: str  # the Celery node name
    hostname: str
    pid: int
    queues: list[str]
    devices: list[dict[str, Any]]
    capacity: dict[str, Any]
    concurrency: int


def register(session: Session, info: WorkerInfo, *, status: str = ONLINE) -> Worker:
    """Insert or refresh this worker's row (a node name reused after a restart takes it over)."""
    now = utcnow()
    row = session.get(Worker, info.id)
    if row is None:
        row = Worker(id=info.id, started_at=now)
        session.add(row)
    elif (row.hostname, row.pid) != (info.hostname, info.pid):  # another process: restarted
        row.started_at = now
    row.hostname, row.pid = info.hostname, info.pid
    row.queues, row.devices, row.capacity = list(info.queues), info.devices, info.capacity
    row.concurrency, row.status, row.heartbeat_at = info.concurrency, status, now
    return row


def beat(session: Session, info: WorkerInfo, status: str) -> None:
    """The heartbeat: the row says the worker is alive now (re-created if someone deleted it)."""
    row = session.get(Worker, info.id)
    if row is None or row.pid != info.pid:
        register(session, info, status=status)
        return
    row.status, row.heartbeat_at = status, utcnow()


def forget_old(session: Session, *, older_than_s: float) -> int:
    """Drop rows of workers silent for longer than `older_than_s` (GET /workers no longer lists
    them)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    res = session.execute(delete(Worker).where(Worker.heartbeat_at < cutoff))
    return int(getattr(res, "rowcount", 0) or 0)


def live_cutoff(heartbeat_s: float, now: datetime | None = None) -> datetime:
    return (now or utcnow()) - timedelta(seconds=LIVE_INTERVALS * heartbeat_s)


def state_of(row: Worker, cutoff: datetime) -> str:
    """online | draining (warm shutdown: takes nothing new) | offline (stopped cleanly) | lost
    (no heartbeat for three intervals: killed, or its machine is gone)."""
    if row.status == OFFLINE:
        return OFFLINE
    return row.status if row.heartbeat_at >= cutoff else LOST


def listed(session: Session, *, heartbeat_s: float, forget_s: float) -> list[tuple[Worker, str]]:
    """Workers heard from within `forget_s`, each with its state, live ones first."""
    now = utcnow()
    cutoff = live_cutoff(heartbeat_s, now)
    rows = session.scalars(
        select(Worker)
        .where(Worker.heartbeat_at >= now - timedelta(seconds=forget_s))
        .order_by(Worker.id)
    )
    out = [(r, state_of(r, cutoff)) for r in rows]
    return sorted(out, key=lambda rs: rs[1] not in (ONLINE, DRAINING))


def live(session: Session, *, heartbeat_s: float) -> list[Worker]:
    """Workers that can take a job now: online, with a recent heartbeat. One query."""
    return list(
        session.scalars(
            select(Worker).where(
                Worker.status == ONLINE, Worker.heartbeat_at >= live_cutoff(heartbeat_s)
            )
        )
    )


def worker_of_owner(owner: str) -> str:
    """The worker (Celery node name) in a lease owner `node/pid/token`."""
    parts = owner.rsplit("/", 2)
    return parts[0] if len(parts) == 3 else owner


def running_by_worker(session: Session, *, tenant: str | None) -> dict[str, int]:
    """Running jobs per worker, from the leases (one grouped query): `tenant`'s alone, filtered
    in SQL, since how busy a worker is with other tenants' jobs tells of their activity; None
    counts every tenant's (an operator's view: /metrics)."""
    out: dict[str, int] = {}
    query = select(Job.lease_owner, func.count()).where(
        Job.status == JobStatus.running.value, Job.lease_owner.is_not(None)
    )
    if tenant is not None:
        query = query.where(Job.tenant == tenant)
    rows = session.execute(query.group_by(Job.lease_owner))
    for owner, n in rows:
        w = worker_of_owner(str(owner))
        out[w] = out.get(w, 0) + int(n)
    return out


def waiting_reason(queue: str, live_workers: Sequence[Worker]) -> dict[str, str] | None:
    """Why a queued job on `queue` cannot start: no live worker consumes that queue. None when
    one does (the job just waits its turn)."""
    if any(queue in (w.queues or []) for w in live_workers):
        return None
    if live_workers:
        offered = "; ".join(
            f"{w.id} consumes {', '.join(w.queues or []) or 'nothing'}" for w in live_workers
        )
        seen = f"live workers: {offered}"
    else:
        seen = "no worker is live"
    hint = (
        "start `tas worker --gpus all` on a machine with a CUDA device"
        if queue == "gpu"
        else f"start `tas worker --queues {queue}`"
    )
    return {"queue": queue, "reason": f"no live worker consumes queue {queue!r} ({seen}); {hint}"}


def annotate_waiting(session: Session, jobs: Sequence[Job], *, heartbeat_s: float) -> None:
    """Set each job's read-time `waiting_for` (JobOut reads it from the instance; it is not a
    column). One query for the whole list, and none when no job in it is queued."""
    annotate_with(jobs, lambda: live(session, heartbeat_s=heartbeat_s))


def annotate_with(jobs: Sequence[Job], live_workers: Callable[[], Sequence[Worker]]) -> None:
    """`annotate_waiting` with the live workers from the caller (who may reuse a recent read);
    `live_workers` is called only when a job in the list is queued."""
    queued = [j for j in jobs if j.status == JobStatus.queued.value]
    for j in jobs:
        setattr(j, WAITING_FOR, None)
    if not queued:
        return
    workers = live_workers()
    reasons: dict[str, dict[str, str] | None] = {}
    for j in queued:
        if j.queue not in reasons:
            reasons[j.queue] = waiting_reason(j.queue, workers)
        setattr(j, WAITING_FOR, reasons[j.queue])

"""Workers and what they can run: the `workers` table, the devices a machine offers, and which
queues a worker may consume.

A worker registers itself (queues, devices, capacity) when it is ready and refreshes its row every
`worker_heartbeat_s`; a row whose heartbeat is older than three intervals is not live (its worker
was killed, or its machine is gone). The API reads the live rows to say, for a queued job that no
live worker consumes, what it is waiting for — instead of the job being claimed by a worker that
cannot run it and failing later.

Device detection never initialises CUDA in the calling process: a worker's main process forks a
child per job, and a CUDA context does not survive a fork. GPUs are listed by `nvidia-smi` (a
separate process), mapped through `CUDA_VISIBLE_DEVICES` the way the CUDA runtime maps them."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from tas.db.models import Job, JobStatus, Worker, utcnow

log = logging.getLogger(__name__)

ONLINE, DRAINING, OFFLINE, LOST = "online", "draining", "offline", "lost"
#: The read-time attribute JobOut shows (set on Job instances, never stored).
WAITING_FOR = "waiting_for"
#: A worker is live while its last heartbeat is within this many heartbeat intervals.
LIVE_INTERVALS = 3


# ---------------------------------------------------------------------------------------------
# What this machine offers


def _has_cuda_device(devices: Sequence[dict[str, Any]]) -> bool:
    return any(str(d.get("id", "")).startswith("cuda") for d in devices)


#: queue → (can these devices serve it, why not). A queue missing here needs nothing special.
QUEUE_NEEDS: dict[str, tuple[Callable[[Sequence[dict[str, Any]]], bool], str]] = {
    "gpu": (_has_cuda_device, "it needs a CUDA device and this machine has none"),
}


@dataclass(frozen=True)
class Servable:
    queues: list[str]
    #: queue → why this worker does not consume it
    dropped: dict[str, str] = field(default_factory=dict)


def servable_queues(requested: Iterable[str], devices: Sequence[dict[str, Any]]) -> Servable:
    """The requested queues this machine's devices can serve, in order, and why the others not:
    a worker that consumed `gpu` without a CUDA device would claim GPU jobs only to fail them."""
    kept: list[str] = []
    dropped: dict[str, str] = {}
    for q in requested:
        q = q.strip()
        if not q or q in kept or q in dropped:
            continue
        need = QUEUE_NEEDS.get(q)
        if need is not None and not need[0](devices):
            dropped[q] = need[1]
        else:
            kept.append(q)
    return Servable(kept, dropped)


def _run_nvidia_smi() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [
                exe,
                "--query-gpu=index,uuid,name,memory.total",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("nvidia-smi failed (%s): no CUDA device listed", exc)
        return None
    return out.stdout


def parse_nvidia_smi(text: str, visible: str | None) -> list[dict[str, Any]]:
    """`nvidia-smi --query-gpu=index,uuid,name,memory.total` rows as devices `cuda:N`, numbered
    as the CUDA runtime numbers them under `CUDA_VISIBLE_DEVICES` (indices or UUID prefixes; the
    list ends at the first entry that names no GPU, as in CUDA)."""
    gpus: list[dict[str, Any]] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        try:
            memory = int(float(parts[3]))
        except ValueError:
            memory = None
        gpus.append({"index": int(parts[0]), "uuid": parts[1], "name": parts[2], "mb": memory})
    if visible is not None:
        chosen = []
        for entry in (e.strip() for e in visible.split(",")):
            match = [
                g
                for g in gpus
                if (entry.isdigit() and g["index"] == int(entry))
                or (entry and not entry.isdigit() and g["uuid"].startswith(entry))
            ]
            if len(match) != 1:
                break
            chosen.append(match[0])
        gpus = chosen
    return [
        {"id": f"cuda:{i}", "name": g["name"], "memory_mb": g["mb"], "uuid": g["uuid"]}
        for i, g in enumerate(gpus)
    ]


def _torch_has_cuda() -> bool:
    """Whether the installed torch was built with CUDA: reading the build's version string
    touches no driver."""
    try:
        import torch
    except ImportError:
        return False
    return torch.version.cuda is not None


def cuda_devices(
    smi: Callable[[], str | None] = _run_nvidia_smi,
    visible: str | None = None,
    torch_cuda: Callable[[], bool] = _torch_has_cuda,
) -> list[dict[str, Any]]:
    """The CUDA devices a job on this machine could use, without initialising CUDA here."""
    if not torch_cuda():
        return []
    text = smi()
    if not text:
        return []
    return parse_nvidia_smi(text, visible)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_mb() -> int | None:
    """Physical memory, bounded by the cgroup's limit when the worker runs in a container."""
    total = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if raw.isdigit():
            limit = int(raw) // 2**20
            total = limit if total is None else min(total, limit)
        break
    return total


@dataclass(frozen=True)
class MachineInfo:
    devices: list[dict[str, Any]]
    capacity: dict[str, Any]


@cache
def detect_machine() -> MachineInfo:
    """This machine's devices and capacity (cached: the CLI and the worker's ready signal run in
    one process and must agree)."""
    gpus = cuda_devices(visible=os.environ.get("CUDA_VISIBLE_DEVICES"))
    devices = [{"id": "cpu", "name": _cpu_name()}, *gpus]
    capacity = {
        "memory_mb": memory_mb(),
        "gpu_memory_mb": [g["memory_mb"] for g in gpus],
        "cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
    }
    return MachineInfo(devices, capacity)


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


def running_by_worker(session: Session) -> dict[str, int]:
    """Running jobs per worker, from the leases (one grouped query)."""
    out: dict[str, int] = {}
    rows = session.execute(
        select(Job.lease_owner, func.count())
        .where(Job.status == JobStatus.running.value, Job.lease_owner.is_not(None))
        .group_by(Job.lease_owner)
    )
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
        "start `tas worker --queues gpu` on a machine with a CUDA device"
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

"""A data-parallel job's run (resources.processes > 1): a torchrun process group, supervised.

The pool child that claimed the job launches `torch.distributed.run --standalone
--nproc-per-node N` (the engine every DDP user knows) as a subprocess in its own session: Celery's
pool children are daemonic and cannot start process pools of their own, and a session of its own
lets the group be stopped as a whole. The first process (rank 0) runs the job as a one-process
run would, with the database reporter (metrics, progress, heartbeats, checkpoints, the result);
the others train their share (`worker.ranks`). This process only keeps the group honest:

- it renews the lease until rank 0's reporter takes over (and after: both renew the same lease);
- a warm shutdown or a SIGTERM to this child writes a stop file that rank 0 reads: the group
  checkpoints and hands the job back, as a one-process run does;
- a lost lease kills the group at once (another worker owns the job); a cancel the group has not
  honoured within `distributed_stop_grace_s` (a rank stuck in a long step) kills it too;
- a process that fails leaves its traceback in the run directory: the attempt fails with the
  first failure's error (the others fail after it, for want of their peer);
- whatever happens, no process of the group outlives the run: each rank and torchrun die with
  their parent (PR_SET_PDEATHSIG), and the group and every rank's session are killed at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from tas.settings import Settings
from tas.store import leases as lease_store

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
STOP_FILE = "stop"
OUTCOME_FILE = "outcome.json"
GROUP_LOG = "group.log"
#: After rank 0 has written the outcome, how long the others may take to leave.
AFTER_OUTCOME_S = 10.0
POLL_S = 0.05

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """This process gets SIGKILL when the process (thread) that started it dies: a killed worker
    leaves no torchrun agent or rank behind holding a GPU or a lease. Linux only; elsewhere a
    no-op (the lease then expires and the ranks fail on their vanished peers)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class GroupResult:
    """How the group's run ended, for the runner to settle: rank 0's own outcome (it settled the
    job), a failure (the first failing process's error, its traceback), or what this process
    decided ("lease_lost", "cancelled" after the grace)."""

    kind: str  # "outcome" | "failed" | "lease_lost" | "cancelled"
    outcome: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] = field(default_factory=dict)
    traceback: str = ""


def run_group(
    run: dict[str, Any],
    *,
    processes: int,
    settings: Settings,
    sessions: sessionmaker[Session],
    lease: lease_store.Lease,
    preempt: Any,
    devices: list[str] | None = None,
    on_launch: Callable[[int], None] | None = None,
) -> GroupResult:
    """Launch the job's process group and supervise it to its end. `run` is what every rank
    reads (`worker.ranks`); `devices` the CUDA devices the group may use (CUDA_VISIBLE_DEVICES)."""
    root = settings.resolved_local_cache_dir / "groups"
    root.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{lease.job_id}-run{lease.attempt}-", dir=root))
    proc: subprocess.Popen[bytes] | None = None
    try:
        write_json(run_dir / RUN_FILE, run)
        proc = _launch(run_dir, processes, settings, devices)
        log.info(
            "job %s: %d processes launched through torchrun (pid %d)",
            lease.job_id,
            processes,
            proc.pid,
        )
        if on_launch is not None:
            on_launch(proc.pid)
        return _supervise(proc, run_dir, settings, sessions, lease, preempt)
    finally:
        stop_group(proc, run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)


def _launch(
    run_dir: Path, processes: int, settings: Settings, devices: list[str] | None
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # Each process gets its share of the cores (torchrun would give each a single thread).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (cpus or 1) // processes)))
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={processes}",
        "--max-restarts=0",  # a failed attempt is the job's to retry, from its checkpoint
        "--monitor-interval=0.1",
        "-m",
        "worker.ranks",
        str(run_dir),
    ]
    with open(run_dir / GROUP_LOG, "wb") as out:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )


def _supervise(
    proc: subprocess.Popen[bytes],
    run_dir: Path,
    settings: Settings,
    sessions: sessionmaker[Session],
    lease: lease_store.Lease,
    preempt: Any,
) -> GroupResult:
    next_beat = 0.0
    cancel_seen: float | None = None
    outcome_seen: float | None = None
    stop_written = False
    while proc.poll() is None:
        now = time.monotonic()
        if not stop_written and preempt.is_set():
            # rank 0 reads it at its next step: the group checkpoints and hands the job back
            (run_dir / STOP_FILE).write_text("preempted")
            stop_written = True
        if now >= next_beat:
            next_beat = now + settings.heartbeat_seconds
            beat = _renew(sessions, lease, settings.lease_seconds)
            if beat == "lost":
                log.warning("job %s: lease lost; stopping its process group", lease.job_id)
                return GroupResult("lease_lost")
            if beat == "cancel" and cancel_seen is None:
                cancel_seen = now
        if cancel_seen is not None and now - cancel_seen > settings.distributed_stop_grace_s:
            log.warning(
                "job %s: the process group did not stop within %.0f s of the cancel; killed",
                lease.job_id,
                settings.distributed_stop_grace_s,
            )
            return GroupResult("cancelled")
        if outcome_seen is None and (run_dir / OUTCOME_FILE).exists():
            outcome_seen = now
        if outcome_seen is not None and now - outcome_seen > AFTER_OUTCOME_S:
            break  # rank 0 is done; the others are stopped with the group
        time.sleep(POLL_S)
    outcome = read_json(run_dir / OUTCOME_FILE)
    if outcome is not None:
        return GroupResult("outcome", outcome=outcome)
    return _failure(run_dir, proc.returncode, processes_log=run_dir / GROUP_LOG)


def _renew(sessions: sessionmaker[Session], lease: lease_store.Lease, seconds: float) -> str | None:
    """Renew the lease: "lost", "cancel" (a cancel was requested) or "held"; None when the
    database could not be reached (the next beat tries again)."""
    try:
        with sessions() as s:
            beat = lease_store.renew(s, lease, seconds)
            s.commit()
    except Exception:
        log.exception("job %s: lease renewal failed", lease.job_id)
        return None
    if beat is None:
        return "lost"
    return "cancel" if beat.cancel_requested else "held"


def _failure(run_dir: Path, returncode: int | None, *, processes_log: Path) -> GroupResult:
    """The group ended without rank 0's outcome: the earliest failure among the processes'
    error files is the cause (the others fail after it, waiting on a peer that is gone)."""
    errors = [e for p in run_dir.glob("error-*.json") if (e := read_json(p)) is not None]
    if errors:
        first = min(errors, key=lambda e: float(e.get("time", 0.0)))
        return GroupResult("failed", error=first["error"], traceback=first.get("traceback", ""))
    tail = _tail(processes_log)
    return GroupResult(
        "failed",
        error={
            "type": "ProcessGroupFailed",
            "message": f"the job's process group ended with exit code {returncode} and no"
            " process reported an error (a process killed by a signal, e.g. out of memory)",
            "hint": "the job's log has the end of the group's output",
            "stage": None,
        },
        traceback=tail,
    )


def stop_group(proc: subprocess.Popen[bytes] | None, run_dir: Path) -> None:
    """Kill whatever is left of the group: torchrun's session and each rank's own session
    (torchrun starts every rank in a session of its own). Idempotent."""
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    for pid_file in run_dir.glob("rank-*.pid"):
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def write_json(path: Path, data: Any) -> None:
    """Written whole or not at all (a reader never sees half), readable by this user only."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tail(path: Path, max_bytes: int = 6000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""

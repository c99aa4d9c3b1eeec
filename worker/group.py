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
from worker import rundir

log = logging.getLogger(__name__)

#: After rank 0 has written the outcome, how long the others may take to leave.
AFTER_OUTCOME_S = 10.0
#: How long a lease that is no longer this run's may be rank 0's own settling of the job (the
#: database says so before rank 0 has written its outcome for this process).
LOST_OUTCOME_WAIT_S = 5.0
#: After a process has reported a failure, how long the others may take to report theirs (the
#: run is lost: torchrun would wait its own 30 s before killing a process that does not stop).
AFTER_FAILURE_S = 3.0
POLL_S = 0.05


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
    entry: str = "worker.ranks",
    pass_fds: list[int] | None = None,
) -> GroupResult:
    """Launch the job's process group and supervise it to its end. `run` is what every rank
        reads (`worker.ranks`); `devices` the CUDA devices the group may use (CUDA_VISIBLE_DEVICES;
    an empty list hides every GPU); `pass_fds` what the group holds with this process (the GPUs'
    slots: free only once both are gone)."""
    root = settings.resolved_local_cache_dir / "groups"
    root.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{lease.job_id}-run{lease.attempt}-", dir=root))
    proc: subprocess.Popen[bytes] | None = None
    try:
        rundir.write_json(run_dir / rundir.RUN_FILE, run)
        proc = _launch(run_dir, processes, settings, devices, entry, pass_fds or [])
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
    run_dir: Path,
    processes: int,
    settings: Settings,
    devices: list[str] | None,
    entry: str,
    pass_fds: list[int],
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # Each process gets its share of the threads a one-process run would have (torchrun would
    # give each a single thread; the worker's OMP_NUM_THREADS, if set, is what there is to share).
    threads = int(env.get("OMP_NUM_THREADS") or 0) or cpus or 1
    env["OMP_NUM_THREADS"] = str(max(1, threads // processes))
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
        entry,
        str(run_dir),
    ]
    with open(run_dir / rundir.GROUP_LOG, "wb") as out:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=rundir.die_with_parent,
            pass_fds=pass_fds,
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
    failure_seen: float | None = None
    stop_written = False
    while proc.poll() is None:
        now = time.monotonic()
        if not stop_written and preempt.is_set():
            # rank 0 reads it at its next step: the group checkpoints and hands the job back
            (run_dir / rundir.STOP_FILE).write_text("preempted")
            stop_written = True
        if now >= next_beat:
            next_beat = now + settings.heartbeat_seconds
            beat = _renew(sessions, lease, settings.lease_seconds)
            if beat == "lost":
                # Rank 0 settling the job ends the lease too: its outcome follows at once.
                outcome = _outcome_within(proc, run_dir, LOST_OUTCOME_WAIT_S)
                if outcome is not None:
                    return GroupResult("outcome", outcome=outcome)
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
        if outcome_seen is None and (run_dir / rundir.OUTCOME_FILE).exists():
            outcome_seen = now
        if outcome_seen is not None and now - outcome_seen > AFTER_OUTCOME_S:
            break  # rank 0 is done; the others are stopped with the group
        if failure_seen is None and outcome_seen is None and any(run_dir.glob("error-*.json")):
            failure_seen = now
        if failure_seen is not None and now - failure_seen > AFTER_FAILURE_S:
            break  # the attempt has failed; what is left of the group is killed
        time.sleep(POLL_S)
    outcome = rundir.read_json(run_dir / rundir.OUTCOME_FILE)
    if outcome is not None:
        return GroupResult("outcome", outcome=outcome)
    return _failure(run_dir, proc.returncode, processes_log=run_dir / rundir.GROUP_LOG)


def _outcome_within(
    proc: subprocess.Popen[bytes], run_dir: Path, seconds: float
) -> dict[str, Any] | None:
    """Rank 0's outcome, if it is written within `seconds` (or before the group ends)."""
    deadline = time.monotonic() + seconds
    path = run_dir / rundir.OUTCOME_FILE
    while True:
        outcome = rundir.read_json(path)
        if outcome is not None:
            return dict(outcome)
        if time.monotonic() >= deadline or proc.poll() is not None:
            last = rundir.read_json(path)
            return dict(last) if last is not None else None
        time.sleep(POLL_S)


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
    errors = [e for p in run_dir.glob("error-*.json") if (e := rundir.read_json(p)) is not None]
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


def _tail(path: Path, max_bytes: int = 6000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""

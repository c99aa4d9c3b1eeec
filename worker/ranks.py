"""One process of a data-parallel job: what torchrun runs (`python -m worker.ranks RUN_DIR`).

`worker.group` launched the group and wrote the run (the job, its lease, the worker's settings)
into RUN_DIR. Every rank joins the process group (`tas.core.distributed.DataParallel`), then rank
0 runs the job as a one-process run does, reporting for it, and the others train their share. A
rank that fails writes its error and traceback into RUN_DIR for the launcher, then exits non-zero
(torchrun then stops the others)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tas.core.distributed import DataParallel, GroupEnv
from tas.core.errors import TrainingError
from tas.settings import Settings
from tas.store.engine import make_engine, make_sessionmaker
from worker import rundir, runner

log = logging.getLogger("worker.ranks")


class StopFile(threading.Event):
    """The launcher's stop request (a warm shutdown of its worker) as rank 0's reporter reads
    preemption: set once the file exists. Looked at most every `every_s` (the loop asks at every
    step)."""

    def __init__(self, path: Path, every_s: float = 0.2) -> None:
        super().__init__()
        self.path, self.every_s = path, every_s
        self._next = 0.0

    def is_set(self) -> bool:
        if super().is_set():
            return True
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every_s
            if self.path.exists():
                self.set()
        return super().is_set()


def _device(spec: dict[str, Any], settings: Settings, env: GroupEnv) -> torch.device:
    """One device per process: its GPU (the launcher made the job's GPUs the visible ones) when
    the job trains on CUDA, else the CPU."""
    wanted = (spec.get("resources") or {}).get("device", "auto")
    if wanted == "auto":
        wanted = settings.device
    if wanted == "cuda" or (
        wanted == "auto" and torch.cuda.is_available() and torch.cuda.device_count() >= env.world
    ):
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def _error_record(exc: BaseException, rank: int, world: int) -> dict[str, Any]:
    if isinstance(exc, TrainingError):
        error = exc.to_error_dict()
    else:
        error = {
            "type": type(exc).__name__,
            "message": str(exc),
            "hint": "the traceback is in the job's log",
            "stage": None,
        }
    label = f"process {rank} of {world}: "
    if not str(error.get("message", "")).startswith(label):  # the pipeline's errors say it
        error["message"] = label + str(error.get("message"))
    return {
        "rank": rank,
        "time": time.time(),
        "error": error,
        "traceback": runner.job_traceback(exc),
    }


#: What a rank runs once it is in the group: (the run, the settings, its place in the group).
Body = Callable[[dict[str, Any], Settings, DataParallel], None]


def run_rank(run: dict[str, Any], settings: Settings, parallel: DataParallel) -> None:
    """Rank 0 runs the job and reports for it (its outcome goes to the launcher); the others
    train their share."""
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    if parallel.rank == 0:
        run_dir = Path(run["run_dir"])
        outcome = runner.run_first_rank(
            run, settings, sessions, parallel, StopFile(run_dir / rundir.STOP_FILE)
        )
        rundir.write_json(
            run_dir / rundir.OUTCOME_FILE, {"status": outcome.status, "queue": outcome.queue}
        )
    else:
        runner.run_replica(run, settings, sessions, parallel)


def main(argv: list[str] | None = None, body: Body = run_rank) -> int:
    rundir.die_with_parent()
    args = sys.argv[1:] if argv is None else argv
    run_dir = Path(args[0])
    env = GroupEnv.read()
    if env is None:
        print("worker.ranks runs under torchrun with WORLD_SIZE > 1", file=sys.stderr)
        return 2
    (run_dir / f"rank-{env.rank}.pid").write_text(str(os.getpid()))
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s rank {env.rank} %(levelname)s %(name)s: %(message)s",
    )
    parallel: DataParallel | None = None
    try:
        run = rundir.read_json(run_dir / rundir.RUN_FILE) | {"run_dir": str(run_dir)}
        settings = Settings(**run["settings"])
        device = _device(run["spec"], settings, env)
        parallel = DataParallel(
            env,
            device,
            timeout_s=settings.distributed_timeout_s,
            wait_s=settings.distributed_wait_s,
        )
        body(run, settings, parallel)
    except BaseException as exc:
        rundir.write_json(
            run_dir / f"error-{env.rank}.json", _error_record(exc, env.rank, env.world)
        )
        log.exception("process %d of %d failed", env.rank, env.world)
        return 1
    finally:
        if parallel is not None:
            parallel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The run directory a data-parallel job's launcher (`worker.group`) shares with its processes
(`worker.ranks`): what each file is, and how both sides write and read them.

`run.json` is the run (the job, its lease, the worker's settings; written by the launcher before
the group starts, readable by this user only); `stop` asks rank 0 to checkpoint and hand the job
back; `outcome.json` is rank 0's settled outcome; `error-<rank>.json` a failed process's error and
traceback; `rank-<rank>.pid` each process's pid (the launcher kills what is left by them)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
STOP_FILE = "stop"
OUTCOME_FILE = "outcome.json"
GROUP_LOG = "group.log"

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """This process gets SIGKILL when the process (thread) that started it dies: a killed worker
    leaves no torchrun agent or rank behind holding a GPU or a lease. Linux only; elsewhere a
    no-op (the lease then expires and the ranks fail on their vanished peers)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


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

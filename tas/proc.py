"""Process plumbing for `tas serve` and its embedded worker (Linux): a child that dies with its
parent, and the process tree read from /proc (no dependency, any pool implementation)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """Run in the child between fork and exec: the kernel sends `sig` when the parent exits, so a
    SIGKILLed or crashed `tas serve` still stops its worker.

    If the parent already died before the request took effect, the child was reparented and would
    never get the signal: it exits at once instead."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, children first."""
    out: list[int] = []
    todo = children_of(pid)
    while todo:
        child = todo.pop()
        out.append(child)
        todo += children_of(child)
    return out


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"

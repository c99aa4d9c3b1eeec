"""A tas deployment whose job-running process the lifecycle tests stop and start again, on
both stacks, and the checks they share (a process group gone, a job past an epoch)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.servers import PostgresServer, RedisServer, free_port
from tests.helpers.stack import Proc, Stack, base_env, spawn, wait_http

FAST = {
    "TAS_LEASE_SECONDS": "4",
    "TAS_HEARTBEAT_SECONDS": "0.3",
    "TAS_REAPER_INTERVAL_S": "1",
    "TAS_REQUEUE_AFTER_S": "30",
}


@dataclass
class Service:
    """A tas deployment whose job-running process can be stopped and started again: `tas serve`
    on the embedded stack, `tas worker` beside `tas serve --no-worker` on Redis + PostgreSQL."""

    stack: Stack
    embedded: bool
    concurrency: int
    port: int
    starts: int = 0

    def start(self) -> Proc:
        self.starts += 1
        c = str(self.concurrency)
        if self.embedded:
            args = ["serve", "--port", str(self.port), "--concurrency", c]
            proc = spawn(f"serve{self.starts}", args, self.stack.env, self.stack.logdir)
            self.stack.procs.append(proc)
            wait_http(self.stack, proc)
            return proc
        return self.stack.start_worker(f"worker{self.starts}", "--concurrency", c)

    @property
    def runner(self) -> Proc:
        return self.stack.procs[-1]

    def worker_log(self) -> str:
        return "\n".join(
            p.log.read_text(errors="replace") for p in self.stack.procs if p.name != "api"
        )


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            pids.append(int(entry))
    return pids


def stop_and_check(proc: Proc, sig: int, within: float = 10.0) -> None:
    """Send `sig` to the process's group; within `within` seconds every process that was in the
    group (the server, its worker, the pool children) must be gone, checked pid by pid."""
    pids = _group(proc.popen.pid)
    assert proc.popen.pid in pids
    os.killpg(proc.popen.pid, sig)
    deadline = time.monotonic() + within
    alive = pids
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            proc.popen.wait(0.2)
        alive = [p for p in pids if p in _group(proc.popen.pid) or _alive(p)]
        if not alive:
            break
    try:
        assert not alive, (
            f"{signal.Signals(sig).name}: still alive after {within} s: {alive}\n{proc.tail()}"
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextlib.contextmanager
def service(
    request: pytest.FixtureRequest,
    tmp: Path,
    kind: str,
    *,
    concurrency: int = 1,
    start: bool = True,
    **env: str,
) -> Iterator[Service]:
    port = free_port()
    extra = {**FAST, **env}
    if kind == "redis_pg":
        redis: RedisServer = request.getfixturevalue("redis_url") and request.getfixturevalue(
            "redis_server"
        )
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        extra.update(TAS_DATABASE_URL=pg.create_database(), TAS_BROKER_URL=redis.url)
    stack = Stack(
        kind, f"http://127.0.0.1:{port}", base_env(tmp / "var", **extra), tmp / "var", tmp
    )
    svc = Service(stack, kind == "embedded", concurrency, port)
    try:
        if not (svc.embedded and start):  # the API alone; the worker starts apart (or later)
            api = spawn("api", ["serve", "--no-worker", "--port", str(port)], stack.env, tmp)
            stack.procs.append(api)
            wait_http(stack, api)
        if start:
            svc.start()
        yield svc
    finally:
        stack.close()


def digits(name: str, epochs: int) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": {"name": "digits", "val_fraction": 0.2},
        "model": {"arch": "mlp", "hidden": [64], "dropout": 0.1},
        "training": {
            "epochs": epochs,
            "batch_size": 32,
            "optimizer": "adam",
            "lr": 0.002,
            "scheduler": "cosine",
            "seed": 3,
        },
        "checkpoint": {"every_epochs": 1, "keep_last": 2},
    }


def epoch_of(job: dict[str, Any]) -> int:
    return int((job.get("progress") or {}).get("epoch", 0))


def running_past(epoch: int) -> Callable[[dict[str, Any]], bool]:
    return lambda j: j["status"] == "running" and epoch_of(j) > epoch

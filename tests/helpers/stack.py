"""A running tas: real processes (`tas serve`, `tas worker`) on the embedded default or on Redis +
PostgreSQL, and an HTTP client for it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.servers import free_port

FINISHED = {"succeeded", "failed", "cancelled"}


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 60) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"--- {self.name} (pid {self.popen.pid}) ---\n" + "\n".join(lines[-n:])

    def stop(self, sig: int = signal.SIGTERM, grace: float = 20.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()


def spawn(name: str, args: list[str], env: dict[str, str], logdir: Path) -> Proc:
    log = logdir / f"{name}.log"
    with log.open("ab") as fh:
        popen = subprocess.Popen(
            [sys.executable, "-m", "tas", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, popen, log)


@dataclass
class Stack:
    name: str
    base_url: str
    env: dict[str, str]
    data_dir: Path
    logdir: Path
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.base_url, timeout=30)

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.procs)

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        r = self.http.post("/jobs", json=spec)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait(
        self,
        job_id: str,
        *,
        timeout: float = 120,
        until: set[str] | None = None,
        predicate: Any = None,
    ) -> dict[str, Any]:
        """Poll until the job reaches a status in `until` (default: finished) or `predicate(job)`."""
        until = until or FINISHED
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in until or (predicate is not None and predicate(job)):
                return job
            time.sleep(0.2)
        raise AssertionError(
            f"job {job_id} still {job.get('status')} after {timeout}s: {job}\n{self.logs()}"
        )

    def start_worker(self, name: str = "worker", *args: str) -> Proc:
        proc = spawn(name, ["worker", "--queues", "default,cpu", *args], self.env, self.logdir)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        self.http.close()
        for p in reversed(self.procs):
            p.stop()


def base_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAS_")}
    env.update(
        TAS_DATA_DIR=str(data_dir),
        TAS_ALLOW_DOWNLOAD="false",
        TAS_HEARTBEAT_SECONDS="0.5",
        TAS_LEASE_SECONDS="10",
        TAS_REAPER_INTERVAL_S="2",
        TAS_REQUEUE_AFTER_S="30",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def wait_http(stack: Stack, proc: Proc, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}\n{proc.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(stack.base_url + "/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} did not answer /healthz in {timeout}s\n{proc.tail()}")


@contextlib.contextmanager
def embedded_stack(
    tmp: Path, *, serve_args: tuple[str, ...] = (), **env_overrides: str
) -> Iterator[Stack]:
    """`tas serve`: the API and its embedded worker, SQLite and the filesystem broker."""
    port = free_port()
    env = base_env(tmp / "var", **env_overrides)
    stack = Stack("embedded", f"http://127.0.0.1:{port}", env, tmp / "var", tmp)
    try:
        serve = spawn("serve", ["serve", "--port", str(port), *serve_args], env, tmp)
        stack.procs.append(serve)
        wait_http(stack, serve)
        yield stack
    finally:
        stack.close()


@contextlib.contextmanager
def distributed_stack(
    tmp: Path, *, database_url: str, broker_url: str, workers: int = 1, **env_overrides: str
) -> Iterator[Stack]:
    """Production layout: `tas migrate`, `tas serve --no-worker`, and separate `tas worker`s."""
    port = free_port()
    env = base_env(
        tmp / "var", TAS_DATABASE_URL=database_url, TAS_BROKER_URL=broker_url, **env_overrides
    )
    stack = Stack("redis_pg", f"http://127.0.0.1:{port}", env, tmp / "var", tmp)
    try:
        subprocess.run(
            [sys.executable, "-m", "tas", "migrate"],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        api = spawn("api", ["serve", "--no-worker", "--port", str(port)], env, tmp)
        stack.procs.append(api)
        for i in range(workers):
            stack.start_worker(f"worker{i}")
        wait_http(stack, api)
        yield stack
    finally:
        stack.close()

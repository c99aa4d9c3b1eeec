"""A job's life through restarts, kills, cancels and a clogged queue, with real processes on both
stacks: `tas serve` alone (SQLite, filesystem broker), and Redis + PostgreSQL with
`tas serve --no-worker` and a separate `tas worker`."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.artifacts import model_file, same_weights
from tests.helpers.servers import PostgresServer, RedisServer, free_port
from tests.helpers.stack import Proc, Stack, base_env, spawn, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]

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


@pytest.mark.timeout(900)
@pytest.mark.parametrize("concurrency", [1, 2])
@pytest.mark.parametrize("kind", ["embedded", "redis_pg"])
def test_three_restarts_are_preemptions_not_failures(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str, concurrency: int
) -> None:
    with service(request, tmp_path, kind, concurrency=concurrency) as svc:
        st = svc.stack
        ref = st.wait(st.submit(digits("reference", 40))["id"], timeout=300)
        assert ref["status"] == "succeeded", st.logs()
        job_id = st.submit(digits("restarted", 40))["id"]
        seen = 1
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
            seen = epoch_of(st.wait(job_id, predicate=running_past(seen), timeout=180))
            stop_and_check(svc.runner, sig)
            if svc.embedded:
                st.http.close()
                st.http = httpx.Client(base_url=st.base_url, timeout=30)
            svc.start()
            held = st.job(job_id)
            assert held["status"] in ("queued", "running"), (held, st.logs())
            assert held["attempts"] <= 1 and held["error"] is None, held
        done = st.wait(job_id, timeout=300)
        log = svc.worker_log()
        assert done["status"] == "succeeded", (done, st.logs())
        assert done["attempts"] == 1, done["attempt_log"]
        assert done["preemptions"] == 3, done["attempt_log"]
        assert [e["outcome"] for e in done["attempt_log"]] == ["preempted"] * 3 + ["succeeded"]
        assert not [s for s in done["stages"] if s["status"] == "running"]
        # A stopping worker claimed nothing: one claim per run, four runs.
        assert log.count(f"claimed job {job_id}") == 4, log
        assert same_weights(model_file(st, ref), model_file(st, done))


@pytest.fixture(params=["embedded", "redis_pg"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def owner_pid(job: dict[str, Any]) -> int:
    """The pool child running the job, from its run's owner (`node/pid/token`)."""
    return int(job["attempt_log"][-1]["owner"].split("/")[-2])


def training(job: dict[str, Any], run: int) -> bool:
    """Run `run` of the job is in its train stage (and has trained a little)."""
    return job["status"] == "running" and any(
        s["attempt"] == run and s["name"] == "train" and s["status"] == "running"
        for s in job["stages"]
    )


@pytest.mark.timeout(600)
def test_max_attempts_names_what_happened_to_each_attempt(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    with service(request, tmp_path, kind, TAS_MAX_ATTEMPTS="2") as svc:
        st = svc.stack
        job_id = st.submit(digits("doomed", 500))["id"]
        for run in (1, 2):
            job = st.wait(job_id, predicate=lambda j, r=run: training(j, r), timeout=180)
            os.kill(owner_pid(job), signal.SIGKILL)
        done = st.wait(job_id, timeout=120)
        assert done["status"] == "failed", (done, st.logs())
        error = done["error"]
        assert error["type"] == "MaxAttemptsExceeded"
        assert "run 1: killed by signal 9 (SIGKILL) in train" in error["message"], error
        assert "run 2: killed by signal 9 (SIGKILL) in train" in error["message"], error
        assert "memory" not in error["message"] + error["hint"]
        assert [(e["outcome"], e.get("signal")) for e in done["attempt_log"]] == [
            ("killed", 9),
            ("killed", 9),
        ]
        assert done["attempts"] == 2 and done["preemptions"] == 0
        assert not [s for s in done["stages"] if s["status"] == "running"]


@pytest.mark.timeout(600)
def test_stages_end_with_a_cancelled_and_a_failed_job(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    with service(request, tmp_path, kind) as svc:
        st = svc.stack
        job_id = st.submit(digits("cancelled", 500))["id"]
        st.wait(job_id, predicate=running_past(1), timeout=180)
        assert st.http.post(f"/jobs/{job_id}/cancel").status_code == 200
        done = st.wait(job_id, timeout=60)
        assert done["status"] == "cancelled"
        stages = {s["name"]: s["status"] for s in done["stages"]}
        assert stages["train"] == "cancelled", stages
        assert "running" not in stages.values()
        assert done["attempt_log"][-1]["outcome"] == "cancelled"

        bad = {
            "name": "diverges",
            "dataset": {"name": "linear", "val_fraction": 0},
            "model": {"arch": "linear"},
            "training": {"epochs": 50, "batch_size": 2, "optimizer": "sgd", "lr": 1.0},
        }
        failed = st.wait(st.submit(bad)["id"], timeout=120)
        assert failed["status"] == "failed"
        stages = {s["name"]: s["status"] for s in failed["stages"]}
        assert stages["train"] == "failed", stages
        assert "running" not in stages.values()
        entry = failed["attempt_log"][-1]
        assert entry["outcome"] == "failed" and entry["detail"].startswith("raised NonFiniteLoss")


def broker_messages(svc: Service) -> int:
    if svc.embedded:
        folder = svc.stack.data_dir / "broker" / "queue"
        return sum(1 for f in folder.iterdir() if f.name.endswith(".msg"))
    import redis

    with redis.Redis.from_url(svc.stack.env["TAS_BROKER_URL"]) as r:
        return sum(int(r.llen(k)) for k in r.keys("*") if r.type(k) == b"list")


@pytest.mark.timeout(900)
def test_cancelled_jobs_messages_are_dropped_without_a_fork(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    """300 queued jobs cancelled: their messages are settled by the worker's main process (no
    pool child), and a job submitted behind them is the only one dispatched."""
    # 300 jobs of one tenant at once: above the default per-tenant bound on active jobs.
    with service(
        request, tmp_path, kind, start=False, TAS_MAX_ACTIVE_JOBS_PER_TENANT="1000"
    ) as svc:
        st = svc.stack
        ids = [st.submit(digits(f"c{i}", 1))["id"] for i in range(300)]
        for job_id in ids:
            assert st.http.post(f"/jobs/{job_id}/cancel").status_code == 200
        assert broker_messages(svc) == 300
        st.start_worker("worker", "--concurrency", "1")
        fresh = st.submit(digits("fresh", 1))["id"]
        done = st.wait(fresh, timeout=300)
        assert done["status"] == "succeeded", st.logs()
        log = svc.worker_log()
        assert log.count("dropped message for job") == 300, log[-3000:]
        assert log.count("dispatching job") == 1, log[-3000:]
        assert broker_messages(svc) == 0

"""A job dispatched to a pool child that never starts it still runs, on both stacks: the worker's
idle pool child is stopped (SIGSTOP) before a job arrives, so the job is handed to a child that
will never take it (on the embedded stack the stopped child even holds the pool's shared job
queue). Within TAS_DISPATCH_START_TIMEOUT_S the worker's start watchdog kills that child and
the job runs once in a fresh one."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tas.proc import alive, children_of
from tests.helpers.lifecycle import Service, digits, service

pytestmark = pytest.mark.integration

BOUND_S = 3


@pytest.fixture(params=["embedded", "redis_pg"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def idle_pool_child(svc: Service, timeout: float = 60) -> int:
    """The worker's one pool child, once the worker is live and the child has had time to get
    ready for a job (stopping it while it is still starting is recovered from as well)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [w for w in svc.stack.http.get("/workers").json() if w["live"]]
        runner = svc.runner.popen.pid
        mains = (
            [p for p in children_of(runner) if " worker " in _cmdline(p)]
            if svc.embedded
            else [runner]
        )
        pool = [c for m in mains for c in children_of(m)]
        if live and len(pool) == 1:
            time.sleep(1.5)
            if children_of(mains[0]) == pool:
                return pool[0]
        time.sleep(0.2)
    raise AssertionError(f"no idle pool child after {timeout} s\n{svc.stack.logs()}")


@pytest.mark.timeout(300)
def test_a_job_dispatched_to_a_stopped_pool_child_still_runs(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    with service(request, tmp_path, kind, TAS_DISPATCH_START_TIMEOUT_S=str(BOUND_S)) as svc:
        st = svc.stack
        stopped = idle_pool_child(svc)
        os.kill(stopped, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            job_id = st.submit(digits("behind-a-stopped-child", 1))["id"]
            done = st.wait(job_id, timeout=90)
            took = time.monotonic() - t0
            assert done["status"] == "succeeded", (done, st.logs())
            assert not alive(stopped), "the stopped pool child still holds its slot"
            assert done["attempts"] == 1 and len(done["attempt_log"]) == 1, done["attempt_log"]
            log = svc.worker_log()
            assert "WARNING worker.pool" in log, log[-3000:]
            # the bound, one look after it, a fresh child and a one-epoch run
            assert took < BOUND_S + 40, took
        finally:
            if alive(stopped):
                os.kill(stopped, signal.SIGKILL)

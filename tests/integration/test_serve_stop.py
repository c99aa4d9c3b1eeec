"""`tas serve` owns its embedded worker: whatever stops the server, nothing it started outlives it.

Real processes: `tas serve` in its own session, as a terminal or a process manager runs it. The
process tree (the server, its worker, the worker's pool children) is read from /proc before the
stop, and every one of those pids must be gone within 10 s, for Ctrl-C (SIGINT to the group),
SIGTERM, and SIGKILL of the server alone (no chance to clean up: the kernel tells the worker)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tas.proc import alive, descendants
from tests.helpers.servers import free_port
from tests.helpers.stack import Stack, base_env, spawn, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = {
    "name": "stop-me",
    "dataset": {"name": "digits"},
    "model": {"arch": "mlp", "hidden": [64]},
    "training": {"epochs": 150, "batch_size": 32, "seed": 0},
    "checkpoint": {"every_epochs": 1},
}


def _serve(tmp: Path, *args: str) -> Stack:
    port = free_port()
    env = base_env(tmp / "var")
    stack = Stack("embedded", f"http://127.0.0.1:{port}", env, tmp / "var", tmp)
    serve = spawn("serve", ["serve", "--port", str(port), *args], env, tmp)
    stack.procs.append(serve)
    wait_http(stack, serve)
    return stack


def _tree_when_ready(stack: Stack, pool_children: int, timeout: float = 90) -> list[int]:
    """The server and everything below it, once the worker and its pool have started."""
    serve = stack.procs[0].popen.pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tree = [serve, *descendants(serve)]
        if len(tree) >= 2 + pool_children and "worker ready" in stack.procs[0].log.read_text():
            return tree
        time.sleep(0.2)
    raise AssertionError(f"worker pool never came up\n{stack.logs()}")


def _assert_all_gone(pids: list[int], within: float = 10.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if not any(alive(p) for p in pids):
            return time.monotonic() - started
        time.sleep(0.1)
    left = [p for p in pids if alive(p)]
    raise AssertionError(f"still alive {within}s after the stop: {left}")


@pytest.mark.parametrize(
    ("sig", "group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGKILL, False)],
    ids=["ctrl-c", "sigterm", "sigkill"],
)
@pytest.mark.parametrize("concurrency", [1, 2])
def test_idle_server_takes_its_worker_along(
    tmp_path: Path, sig: signal.Signals, group: bool, concurrency: int
) -> None:
    stack = _serve(tmp_path, "--concurrency", str(concurrency))
    try:
        tree = _tree_when_ready(stack, concurrency)
        serve = tree[0]
        if group:
            os.killpg(serve, sig)  # a terminal's Ctrl-C reaches the whole foreground group
        else:
            os.kill(serve, sig)
        _assert_all_gone(tree)
    finally:
        stack.close()


def test_stop_with_a_running_job_checkpoints_and_exits_in_seconds(tmp_path: Path) -> None:
    stack = _serve(tmp_path)
    try:
        tree = _tree_when_ready(stack, 1)
        job = stack.submit(SPEC)
        stack.wait(
            job["id"],
            predicate=lambda j: (j["progress"] or {}).get("epoch", 0) >= 2,
        )
        os.killpg(tree[0], signal.SIGINT)
        took = _assert_all_gone([*tree, *descendants(tree[0])])
        log = stack.procs[0].log.read_text()
        assert "as requeued" in log, log
        assert "did not stop within" not in log, log
        assert took < 10
    finally:
        stack.close()
    # Started again on the same data: the job resumes from its checkpoint, not from the start.
    stack = _serve(tmp_path)
    try:
        done = stack.wait(job["id"], timeout=240)
        assert done["status"] == "succeeded", done
        train = [s for s in done["stages"] if s["name"] == "train" and s["status"] == "succeeded"]
        assert (train[-1]["outputs"]["resumed_from"] or {}).get("epoch", 0) >= 2, [
            (
                s["attempt"],
                s["name"],
                s["status"],
                (s["outputs"] or {}).get("resumed_from"),
                (s["outputs"] or {}).get("epochs_run"),
            )
            for s in done["stages"]
        ]
    finally:
        stack.close()

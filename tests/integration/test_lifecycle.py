"""A job's life through restarts, kills, cancels and a clogged queue, with real processes on both
stacks: `tas serve` alone (SQLite, filesystem broker), and Redis + PostgreSQL with
`tas serve --no-worker` and a separate `tas worker`. Restarts are in test_restarts.py (a file
of their own, so the test files' parallel run spreads the two longest groups)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.lifecycle import Service, digits, running_past, service

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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

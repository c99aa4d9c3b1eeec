"""Nothing lost when a process dies: real Redis, real PostgreSQL, real worker processes killed."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.artifacts import job_dir, model_file, same_weights
from tests.helpers.servers import PostgresServer, RedisServer
from tests.helpers.specs import at_epoch, digits_mlp_spec
from tests.helpers.stack import Stack, distributed_stack

pytestmark = pytest.mark.integration

FAST = {
    "TAS_LEASE_SECONDS": "3",
    "TAS_HEARTBEAT_SECONDS": "0.5",
    "TAS_REAPER_INTERVAL_S": "1",
    "TAS_REQUEUE_AFTER_S": "3",
}


@pytest.fixture
def make_stack(
    redis_url: str, postgres_server: PostgresServer, tmp_path: Path
) -> Iterator[Callable[..., Stack]]:
    with ExitStack() as stack:

        def make(workers: int = 1) -> Stack:
            return stack.enter_context(
                distributed_stack(
                    tmp_path,
                    database_url=postgres_server.create_database(),
                    broker_url=redis_url,
                    workers=workers,
                    **FAST,
                )
            )

        yield make


def final_row(stack: Stack, job_id: str) -> dict[str, Any]:
    row = stack.http.get(f"/jobs/{job_id}/metrics").json()[-1]
    return {k: row[k] for k in ("epoch", "train_loss", "val_loss", "val_accuracy")}


def test_kill_9_mid_training_resumes_to_identical_weights(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(workers=1)
    ref = stack.wait(stack.submit(digits_mlp_spec("reference"))["id"], timeout=300)
    assert ref["status"] == "succeeded", stack.logs()

    job = stack.submit(digits_mlp_spec("victim"))
    stack.wait(job["id"], predicate=at_epoch(4), timeout=120)
    stack.procs[-1].stop(signal.SIGKILL)  # the whole worker, children included: a lost machine
    stack.start_worker("worker-b")
    done = stack.wait(job["id"], timeout=300)
    assert done["status"] == "succeeded", (done, stack.logs())
    assert done["attempts"] == 2
    second = [(s["name"], s["status"]) for s in done["stages"] if s["attempt"] == 2]
    assert second == [
        (name, "succeeded") for name in ("collect", "preprocess", "train", "evaluate", "register")
    ]
    first = {s["name"]: s["status"] for s in done["stages"] if s["attempt"] == 1}
    assert first["train"] == "interrupted"
    assert same_weights(model_file(stack, ref), model_file(stack, done))
    assert final_row(stack, ref["id"]) == final_row(stack, done["id"])


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(workers=1)
    ref = stack.wait(stack.submit(digits_mlp_spec("reference", epochs=12))["id"], timeout=300)
    job = stack.submit(digits_mlp_spec("victim", epochs=12))
    stack.wait(job["id"], predicate=at_epoch(5), timeout=120)
    stack.procs[-1].stop(signal.SIGKILL)
    ckpts = sorted(
        (job_dir(stack, job) / "checkpoints").rglob("*.safetensors"),
        key=lambda p: p.stat().st_mtime,
    )
    assert len(ckpts) >= 2, ckpts
    ckpts[-1].write_bytes(b"torn" + ckpts[-1].read_bytes()[100:])  # the newest one, torn
    stack.start_worker("worker-b")
    done = stack.wait(job["id"], timeout=300)
    assert done["status"] == "succeeded", (done, stack.logs())
    assert same_weights(model_file(stack, ref), model_file(stack, done))


def test_the_same_message_delivered_twice_runs_once(
    make_stack: Callable[..., Stack], redis_url: str
) -> None:
    from celery import Celery

    stack = make_stack(workers=2)
    job = stack.submit(digits_mlp_spec("twice", epochs=6))
    producer = Celery(broker=redis_url)
    for _ in range(2):
        producer.send_task("tas.run_job", args=[job["id"]], queue="default")
    done = stack.wait(job["id"], timeout=300)
    assert done["status"] == "succeeded", stack.logs()
    time.sleep(2)  # let the duplicate deliveries arrive and be refused
    done = stack.job(job["id"])
    assert done["attempts"] == 1
    assert [s["attempt"] for s in done["stages"]] == [1] * 5
    assert [v["version"] for v in stack.http.get("/models/twice").json()["versions"]] == [1]
    # The second message never cost a pool child: the worker's main process dropped it.
    assert "dropped message for job" in stack.logs()


def test_redis_restarted_empty_loses_no_queued_job(
    make_stack: Callable[..., Stack], redis_server: RedisServer
) -> None:
    stack = make_stack(workers=0)
    ids = [stack.submit(digits_mlp_spec(f"q{i}", epochs=2))["id"] for i in range(3)]
    redis_server.restart(empty=True)  # the messages are gone; the rows are not
    stack.start_worker()
    for job_id in ids:
        assert stack.wait(job_id, timeout=180)["status"] == "succeeded", stack.logs()


def test_sigterm_hands_the_job_back_and_another_worker_resumes_it(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(workers=1)
    job = stack.submit(digits_mlp_spec("handback", epochs=20))
    stack.wait(job["id"], predicate=at_epoch(3), timeout=120)
    worker = stack.procs[-1]
    worker.stop(signal.SIGTERM, grace=30)
    assert worker.popen.returncode is not None
    requeued = stack.job(job["id"])
    assert requeued["status"] == "queued", (requeued, stack.logs())
    stack.start_worker("worker-b")
    done = stack.wait(job["id"], timeout=300)
    assert done["status"] == "succeeded", stack.logs()
    # A hand-back is a preemption, not a failed attempt.
    assert (done["attempts"], done["preemptions"]) == (1, 1)
    assert [e["outcome"] for e in done["attempt_log"]] == ["preempted", "succeeded"]


def test_nan_loss_fails_with_epoch_step_and_hint(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(workers=1)
    bad = {
        "name": "diverge",
        "dataset": {"name": "linear", "val_fraction": 0},
        "model": {"arch": "linear"},
        "training": {"epochs": 50, "batch_size": 2, "optimizer": "sgd", "lr": 1.0},
    }
    done = stack.wait(stack.submit(bad)["id"], timeout=120)
    assert done["status"] == "failed"
    err = done["error"]
    assert err["type"] == "NonFiniteLoss"
    assert err["stage"] == "train"
    assert "epoch" in err["message"] and "step" in err["message"]
    assert "lr" in err["hint"] and "grad_clip" in err["hint"]


def test_cancel_running_job_within_two_seconds(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(workers=1)
    job = stack.submit(digits_mlp_spec("long", epochs=500))
    stack.wait(job["id"], predicate=at_epoch(2), timeout=120)
    t0 = time.monotonic()
    assert stack.http.post(f"/jobs/{job['id']}/cancel").status_code == 200
    while stack.job(job["id"])["status"] == "running":
        assert time.monotonic() - t0 < 2.0, stack.logs()
        time.sleep(0.05)
    done = stack.job(job["id"])
    assert done["status"] == "cancelled"
    assert stack.http.get(f"/jobs/{job['id']}/checkpoints").json()  # kept
    assert stack.http.get(f"/jobs/{job['id']}/metrics").json()  # kept

"""Resume, clone, tags and delete against real processes, on the embedded stack and on Redis +
PostgreSQL. A job is given one attempt here, so a killed pool child fails it for good: resuming
it (and a cancelled job) must end `succeeded` with the weights of a run never interrupted."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.servers import PostgresServer, RedisServer
from tests.helpers.specs import at_epoch, digits_mlp_spec
from tests.helpers.stack import Stack, distributed_stack, embedded_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["embedded", "redis_pg"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp(f"resume-{request.param}")
    env = {"TAS_MAX_ATTEMPTS": "1"}
    if request.param == "embedded":
        with embedded_stack(tmp, **env) as s:
            yield s
    else:
        redis: RedisServer = request.getfixturevalue("redis_server")
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        with distributed_stack(
            tmp, database_url=pg.create_database(), broker_url=redis.url, **env
        ) as s:
            yield s


def job_dir(stack: Stack, job_id: str) -> Path:
    return stack.data_dir / "artifacts" / "jobs" / job_id


def weights(stack: Stack, job_id: str) -> dict[str, torch.Tensor]:
    path = job_dir(stack, job_id) / "model" / "model.safetensors"
    assert path.is_file(), list(job_dir(stack, job_id).rglob("*"))
    return load_file(str(path))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def epoch_rows(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    rows = stack.http.get(f"/jobs/{job_id}/metrics").json()
    return [{k: r[k] for k in ("epoch", "train_loss", "val_loss", "val_accuracy")} for r in rows]


@pytest.fixture(scope="module")
def reference(stack: Stack) -> str:
    """The same spec, never interrupted."""
    done = stack.wait(stack.submit(digits_mlp_spec("reference", epochs=12))["id"], timeout=400)
    assert done["status"] == "succeeded", (done, stack.logs())
    return str(done["id"])


def resume_to_success(stack: Stack, job_id: str) -> dict[str, Any]:
    r = stack.http.post(f"/jobs/{job_id}/resume")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued" and r.json()["attempts"] == 0
    done = stack.wait(job_id, timeout=400)
    assert done["status"] == "succeeded", (done, stack.logs())
    return done


def test_a_cancelled_job_resumes_to_the_uninterrupted_weights(stack: Stack, reference: str) -> None:
    job = stack.submit(digits_mlp_spec("cancelled", epochs=12))["id"]
    stack.wait(job, predicate=at_epoch(3), timeout=200)
    assert stack.http.post(f"/jobs/{job}/cancel").status_code == 200
    stopped = stack.wait(job, timeout=60)
    assert stopped["status"] == "cancelled", (stopped, stack.logs())
    assert stack.http.get(f"/jobs/{job}/checkpoints").json()
    assert (stopped["progress"] or {}).get("epoch", 0) < 12  # stopped mid-training

    done = resume_to_success(stack, job)
    assert done["cancel_requested"] is False and done["error"] is None
    assert same_weights(weights(stack, reference), weights(stack, job))
    assert epoch_rows(stack, reference) == epoch_rows(stack, job)


def test_a_job_failed_by_a_killed_worker_resumes_to_the_uninterrupted_weights(
    stack: Stack, reference: str
) -> None:
    job = stack.submit(digits_mlp_spec("killed", epochs=12))["id"]
    running = stack.wait(job, predicate=at_epoch(3), timeout=200)
    owner = running["attempt_log"][-1]["owner"]  # host/pid/token of the pool child running it
    os.kill(int(owner.split("/")[1]), signal.SIGKILL)
    failed = stack.wait(job, timeout=120)
    assert failed["status"] == "failed", (failed, stack.logs())
    assert failed["error"]["type"] == "MaxAttemptsExceeded"  # one attempt, used up
    assert stack.http.post(f"/jobs/{job}/clone", json={"x": 1}).status_code == 422

    done = resume_to_success(stack, job)
    assert done["attempts"] == 1  # the fresh budget's first run
    assert len(done["attempt_log"]) >= 2  # the killed run is still on record
    assert same_weights(weights(stack, reference), weights(stack, job))
    assert epoch_rows(stack, reference) == epoch_rows(stack, job)


def test_tags_clone_and_delete(stack: Stack, reference: str) -> None:
    small = {
        "name": "iris-tagged",
        "dataset": {"name": "iris"},
        "model": {"arch": "mlp", "hidden": [8]},
        "training": {"epochs": 1, "batch_size": 16},
        "tags": {"team": "vision", "run": "a"},
    }
    first = stack.submit(small)["id"]
    r = stack.http.post(
        f"/jobs/{first}/clone", json={"training": {"epochs": 2}, "tags": {"run": "b"}}
    )
    assert r.status_code == 201, r.text
    second = r.json()["id"]
    assert r.json()["spec"]["training"]["epochs"] == 2
    for job_id in (first, second):
        assert stack.wait(job_id, timeout=200)["status"] == "succeeded", stack.logs()

    def listed(**params: Any) -> list[str]:
        r = stack.http.get("/jobs", params=params)
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["items"]]

    # filtered in SQL: JSON_EXTRACT on SQLite, ->> on PostgreSQL's JSONB
    assert listed(tag="team:vision") == [second, first]
    assert listed(tag=["team:vision", "run:b"]) == [second]
    assert listed(name="iris-", status="succeeded") == [second, first]
    assert stack.http.patch(f"/jobs/{first}", json={"tags": {"run": None}}).status_code == 200
    assert listed(tag="run:a") == []
    assert stack.http.get("/jobs", params={"nmae": "x"}).status_code == 422

    # each trained a model version served from its files: delete the version, then the job
    r = stack.http.delete(f"/jobs/{first}")
    assert r.status_code == 409 and "iris-tagged:1" in r.json()["detail"], r.text
    assert stack.http.delete("/models/iris-tagged/versions/1").status_code == 204
    assert stack.http.delete(f"/jobs/{first}").status_code == 204
    assert not job_dir(stack, first).exists()
    assert stack.http.get(f"/jobs/{first}").status_code == 404
    assert stack.http.get(f"/jobs/{second}").json()["status"] == "succeeded"

"""Workers on a CPU-only deployment, on the embedded stack (`tas serve`, whose worker is asked for
default,cpu,gpu) and on Redis + PostgreSQL: each worker registers what it can run, a cuda job is
never claimed (it waits, saying for what, and its submit warned), a cpu job beside it runs, and
/metrics reports the job, the worker and the predictions."""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.stack import Stack

pytestmark = pytest.mark.integration

IRIS = {
    "name": "iris-w",
    "dataset": {"name": "iris", "val_fraction": 0.2},
    "model": {"arch": "mlp", "hidden": [8]},
    "training": {"epochs": 3, "batch_size": 16, "optimizer": "adam", "lr": 0.01},
}


def live_workers(stack: Stack, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = [w for w in stack.http.get("/workers").json() if w["live"]]
        if listed:
            return listed
        time.sleep(0.3)
    raise AssertionError(f"no live worker after {timeout}s\n{stack.logs()}")


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = stack.http.get("/metrics")
    assert r.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_a_cuda_job_waits_on_a_cpu_only_deployment_while_a_cpu_job_runs(stack: Stack) -> None:
    (worker,) = live_workers(stack)
    assert "gpu" not in worker["queues"] and {"default", "cpu"} <= set(worker["queues"])
    assert [d["id"] for d in worker["devices"]] == ["cpu"]
    assert worker["capacity"]["cpus"] >= 1 and worker["capacity"]["memory_mb"] > 0

    r = stack.http.post(
        "/jobs", json={**IRIS, "name": "iris-cuda", "resources": {"device": "cuda"}}
    )
    assert r.status_code == 201, r.text
    cuda = r.json()
    assert cuda["queue"] == "gpu"
    assert (
        len(cuda["warnings"]) == 1 and "no live worker consumes queue 'gpu'" in cuda["warnings"][0]
    )
    assert worker["id"] in cuda["warnings"][0]
    assert "warning" in r.headers

    cpu = stack.submit({**IRIS, "resources": {"device": "cpu"}})
    assert cpu["warnings"] == [] and cpu["waiting_for"] is None
    done = stack.wait(cpu["id"])
    assert done["status"] == "succeeded", done

    time.sleep(1.0)  # the worker is idle now; it had every chance to take the cuda job
    waiting = stack.job(cuda["id"])
    assert waiting["status"] == "queued" and waiting["attempts"] == 0 and waiting["stages"] == []
    assert waiting["waiting_for"]["queue"] == "gpu"
    assert "CUDA device" in waiting["waiting_for"]["reason"]
    assert f"claimed job {cuda['id']}" not in stack.logs()

    # /metrics after a job and some predictions
    x = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    versions = set()
    for n in (1, 3, 2):
        p = stack.http.post("/predict", json={"model": cpu["id"], "inputs": x[:n]})
        assert p.status_code == 200, p.text
        versions.add(f"{p.json()['model']['name']}:{p.json()['model']['version']}")
    (label,) = versions
    m = scrape(stack)
    model_label = (("model", label),)
    assert m[("tas_predict_latency_seconds_count", model_label)] == 3
    assert m[("tas_predict_batch_size_sum", model_label)] == 6
    assert m[("tas_queue_depth", (("queue", "gpu"),))] == 1
    assert m[("tas_jobs", (("status", "queued"),))] == 1
    assert m[("tas_worker_running_jobs", (("worker", worker["id"]),))] == 0
    assert m[("tas_workers", (("state", "online"),))] == 1
    assert m[("tas_job_duration_seconds_count", (("status", "succeeded"),))] == 1
    train = (("name", "train"), ("status", "succeeded"))
    assert m[("tas_stage_duration_seconds_count", train)] == 1
    preprocess = next(s for s in done["stages"] if s["name"] == "preprocess")
    assert m[("tas_epochs_trained_total", ())] == 3
    assert m[("tas_samples_trained_total", ())] == 3 * preprocess["outputs"]["train_samples"]

    assert stack.http.post(f"/jobs/{cuda['id']}/cancel").status_code == 200


def test_a_stopped_worker_is_listed_offline(stack: Stack) -> None:
    extra = stack.start_worker("extra", "--hostname", "extra@%h")
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ids = [w["id"] for w in live_workers(stack)]
            if any(i.startswith("extra@") for i in ids):
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"extra worker never registered\n{extra.tail()}")
    finally:
        extra.stop()
    (row,) = [w for w in stack.http.get("/workers").json() if w["id"].startswith("extra@")]
    assert row["status"] == "offline" and row["live"] is False, row


def test_a_running_job_is_counted_on_its_worker(stack: Stack) -> None:
    """The lease owner names the worker's node, so /workers and /metrics agree on who runs it."""
    (worker,) = live_workers(stack)
    job = stack.submit(
        {
            "name": "digits-long",
            "dataset": {"name": "digits", "val_fraction": 0.1},
            "model": {"arch": "mlp", "hidden": [256, 256]},
            "training": {"epochs": 200, "batch_size": 32, "optimizer": "adam", "lr": 0.001},
        }
    )
    stack.wait(job["id"], until={"running"}, timeout=120)
    try:
        listed = {w["id"]: w for w in stack.http.get("/workers").json()}
        assert listed[worker["id"]]["running_jobs"] == 1
        m = scrape(stack)
        assert m[("tas_worker_running_jobs", (("worker", worker["id"]),))] == 1
        assert m[("tas_jobs", (("status", "running"),))] == 1
    finally:
        assert stack.http.post(f"/jobs/{job['id']}/cancel").status_code == 200
    assert stack.wait(job["id"])["status"] == "cancelled"


def test_processes_beyond_the_live_workers_cpus_are_refused_at_submit(stack: Stack) -> None:
    """The bound is what the real worker registered (its CPUs for a cpu job), not a guess."""
    (worker,) = live_workers(stack)
    n = worker["capacity"]["cpus"] + 1
    spec = {
        **IRIS,
        "name": "iris-wide",
        "training": {**IRIS["training"], "batch_size": 4 * n},
        "resources": {"device": "cpu", "processes": n},
    }
    r = stack.http.post("/jobs", json=spec)
    assert r.status_code == 422, r.text
    [problem] = r.json()["detail"]
    assert problem["loc"] == ["body", "resources", "processes"]
    assert (
        f"{n} processes, but the largest live worker on queue 'cpu' offers {n - 1} CPUs"
        f" (worker {worker['id']})"
    ) in problem["msg"]

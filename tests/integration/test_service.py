"""The whole service with a real worker process, on the embedded stack and on Redis + PostgreSQL:
known results (a digits MLP, XOR, a linear fit) reproduced through the API, the job's record, cancellation and /predict."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.helpers.stack import Stack

pytestmark = pytest.mark.integration

STAGES = ["collect", "preprocess", "train", "evaluate", "register"]


def digits_spec(**training: Any) -> dict[str, Any]:
    return {
        "name": "digits-mlp",
        "dataset": {"name": "digits", "val_fraction": 0.15, "split_seed": 42, "stratify": True},
        "model": {"arch": "mlp", "hidden": [512, 512]},
        "training": {
            "epochs": 15,
            "batch_size": 64,
            "optimizer": "adam",
            "lr": 0.001,
            "loss": "cross_entropy",
            "seed": 0,
            **training,
        },
        "checkpoint": {"every_epochs": 1, "keep_last": 2, "monitor": "val_accuracy"},
    }


XOR_SPEC = {
    "name": "xor",
    "model_name": "xor-classifier",
    "dataset": {"name": "xor", "val_fraction": 0.2},
    "model": {"arch": "mlp", "hidden": [4], "activation": "tanh"},
    "training": {"epochs": 100, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "loss": "bce"},
    "checkpoint": {"every_epochs": 25},
}

LINEAR_SPEC = {
    "name": "seed-linear",
    "dataset": {"name": "linear", "val_fraction": 0.0},
    "model": {"arch": "linear"},
    "training": {
        "epochs": 2000,
        "batch_size": 2,
        "optimizer": "sgd",
        "lr": 1e-5,
        "loss": "mse",
        "seed": 1,
    },
    "checkpoint": {"every_epochs": 500},
}


@pytest.fixture(scope="module")
def digits_job(stack: Stack) -> dict[str, Any]:
    job = stack.submit(digits_spec())
    return stack.wait(job["id"], timeout=180)


def test_digits_mlp_reaches_the_seed_accuracy(stack: Stack, digits_job: dict[str, Any]) -> None:
    job = digits_job
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["best_metrics"]["val_accuracy"] >= 0.93
    assert job["attempts"] == 1
    assert job["error"] is None
    assert job["progress"]["epoch"] == job["progress"]["epochs"] == 15
    assert job["progress"]["fraction"] == pytest.approx(1.0)
    assert job["started_at"] <= job["finished_at"]


def test_job_records_each_pipeline_stage(stack: Stack, digits_job: dict[str, Any]) -> None:
    stages = {s["name"]: s for s in digits_job["stages"]}
    assert list(stages) == STAGES
    for s in stages.values():
        assert s["status"] == "succeeded"
        assert s["started_at"] <= s["finished_at"]
        assert s["outputs"], s
    assert stages["collect"]["outputs"]  # e.g. sample counts
    assert stages["register"]["outputs"]


def test_metrics_history_has_a_row_per_epoch(stack: Stack, digits_job: dict[str, Any]) -> None:
    rows = stack.http.get(f"/jobs/{digits_job['id']}/metrics").json()
    assert [r["epoch"] for r in rows] == list(range(1, 16))
    for r in rows:
        for key in (
            "train_loss",
            "val_loss",
            "val_accuracy",
            "lr",
            "epoch_seconds",
            "samples_per_second",
        ):
            assert isinstance(r[key], float | int), (key, r)
        assert r["step"] is None
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    steps = stack.http.get(f"/jobs/{digits_job['id']}/metrics", params={"kind": "step"}).json()
    assert steps and all(r["step"] is not None for r in steps)


def test_checkpoints_keep_last_and_best(stack: Stack, digits_job: dict[str, Any]) -> None:
    cps = stack.http.get(f"/jobs/{digits_job['id']}/checkpoints").json()
    assert 1 <= len(cps) <= 3  # keep_last 2 plus the best when it is older
    assert sum(c["is_best"] for c in cps) == 1
    assert max(c["epoch"] for c in cps) == 15
    best = next(c for c in cps if c["is_best"])
    assert best["metric_name"] == "val_accuracy"
    assert best["metric_value"] == pytest.approx(digits_job["best_metrics"]["val_accuracy"])


def test_predict_with_the_trained_model(stack: Stack, digits_job: dict[str, Any]) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images[:20] / 16.0).tolist()  # raw 8×8 samples; the model normalises itself
    r = stack.http.post("/predict", json={"model": digits_job["id"], "inputs": images})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {
        "name": "digits-mlp",
        "version": body["model"]["version"],
        "job_id": digits_job["id"],
    }
    preds = body["predictions"]
    assert len(preds) == 20
    assert sum(p["label"] == y for p, y in zip(preds, d.target[:20], strict=True)) >= 17
    for p in preds:
        assert len(p["probabilities"]) == 10
        assert sum(p["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert p["class_name"] == str(p["label"])
    # by name (latest version) too
    r = stack.http.post("/predict", json={"model": "digits-mlp", "inputs": images[:1]})
    assert r.status_code == 200, r.text


def test_predict_wrong_shape_is_422_with_expected_shape(
    stack: Stack, digits_job: dict[str, Any]
) -> None:
    r = stack.http.post("/predict", json={"model": digits_job["id"], "inputs": [[1.0, 2.0, 3.0]]})
    assert r.status_code == 422
    assert "8" in str(r.json()["detail"]) and "expected" in str(r.json()["detail"]).lower()
    r = stack.http.post("/predict", json={"model": "f" * 32, "inputs": [[1.0]]})
    assert r.status_code == 404
    r = stack.http.post("/predict", json={"model": "no-such-model", "inputs": [[1.0]]})
    assert r.status_code == 404


def test_xor_seed(stack: Stack) -> None:
    job = stack.wait(stack.submit(XOR_SPEC)["id"], timeout=180)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["best_metrics"]["val_accuracy"] >= 0.99
    r = stack.http.post(
        "/predict", json={"model": job["id"], "inputs": [[0, 0], [0, 1], [1, 0], [1, 1]]}
    )
    assert [p["label"] for p in r.json()["predictions"]] == [0, 1, 1, 0]
    # registered under the spec's model_name, not the job's name
    assert r.json()["model"]["name"] == "xor-classifier"
    assert stack.http.get("/models/xor-classifier").status_code == 200


def test_linear_regression_seed(stack: Stack) -> None:
    job = stack.wait(stack.submit(LINEAR_SPEC)["id"], timeout=240)
    assert job["status"] == "succeeded", (job, stack.logs())
    r = stack.http.post("/predict", json={"model": job["id"], "inputs": [[73, 80, 75]]})
    assert r.status_code == 200, r.text
    value = r.json()["predictions"][0]["value"]
    value = value[0] if isinstance(value, list) else value
    assert value == pytest.approx(152, abs=4)
    rows = stack.http.get(f"/jobs/{job['id']}/metrics").json()
    assert len(rows) == 2000
    assert "val_loss" not in rows[-1] or rows[-1]["val_loss"] is None


def test_cancel_running_job_then_409(stack: Stack) -> None:
    job = stack.submit(digits_spec(epochs=5000))
    stack.wait(
        job["id"],
        until={"running"},
        predicate=lambda j: (j["progress"] or {}).get("step", 0) > 0,
        timeout=120,
    )
    t0 = time.monotonic()
    r = stack.http.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 200
    done = stack.wait(job["id"], timeout=30)
    assert done["status"] == "cancelled", (done, stack.logs())
    assert time.monotonic() - t0 < 10
    assert stack.http.post(f"/jobs/{job['id']}/cancel").status_code == 409
    assert (
        stack.http.post("/predict", json={"model": job["id"], "inputs": [[0.0] * 64]}).status_code
        == 409
    )


def test_list_jobs_newest_first_with_cursor_and_status(stack: Stack) -> None:
    ids = [stack.submit(digits_spec(epochs=1) | {"name": f"page-{i}"})["id"] for i in range(3)]
    page = stack.http.get("/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:2]
    assert page["next_cursor"]
    page2 = stack.http.get("/jobs", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert page2["items"][0]["id"] == ids[0]
    for job_id in ids:
        stack.wait(job_id, timeout=120)
    succeeded = stack.http.get("/jobs", params={"status": "succeeded", "limit": 200}).json()
    assert set(ids) <= {j["id"] for j in succeeded["items"]}
    assert all(j["status"] == "succeeded" for j in succeeded["items"])
    assert stack.http.get("/jobs", params={"cursor": "garbage!"}).status_code == 422
    assert stack.http.get("/jobs", params={"status": "bogus"}).status_code == 422


def test_health_and_readiness(stack: Stack) -> None:
    assert stack.http.get("/healthz").json() == {"status": "ok"}
    ready = stack.http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["database"] == "ok" and ready.json()["broker"] == "ok"
    metrics = stack.http.get("/metrics").text
    assert "tas_jobs{" in metrics and "tas_http_requests_total" in metrics

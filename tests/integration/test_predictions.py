"""Per-sample predictions of a job's held-out splits through the API (JSON and CSV), which
weights made them, the refusals, and /predict agreeing with them in the target's units."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from sklearn.datasets import load_diabetes, load_iris

from tas.client import Client
from tests.helpers.stack import Stack

pytestmark = pytest.mark.integration


def iris_spec(**dataset: Any) -> dict[str, Any]:
    return {
        "name": "iris-preds",
        "dataset": {"name": "iris", "val_fraction": 0.2, **dataset},
        "model": {"arch": "mlp", "hidden": [16]},
        "training": {"epochs": 8, "optimizer": "adam", "lr": 0.01, "batch_size": 16},
    }


def test_predictions_json_and_csv_and_refusals(stack: Stack) -> None:
    http = stack.http
    job = stack.wait(stack.submit(iris_spec(test_fraction=0.2))["id"], timeout=180)
    assert job["status"] == "succeeded", (job, stack.logs())
    jid = job["id"]
    weights = job["result"]["weights"]
    assert weights["keep"] == "best" and weights["metric"] == "val_accuracy"
    assert job["result"]["predictions"] == {"val": 30, "test": 30}
    # A finished job keeps the throughput it measured.
    assert job["progress"]["fraction"] == 1.0 and job["progress"]["samples_per_second"] > 0

    r = http.get(f"/jobs/{jid}/predictions")  # default: the evaluated split, test
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["split"], body["task"], body["count"]) == ("test", "classification", 30)
    assert body["weights"] == weights
    X, y = load_iris(return_X_y=True)
    names = ["setosa", "versicolor", "virginica"]
    rows = body["predictions"]
    for row in rows:
        assert row["label"] == y[row["index"]]
        assert row["class_name"] == names[row["label"]]
        assert row["correct"] == (row["label"] == row["predicted"])
        assert 0 < row["probability"] <= 1
    accuracy = sum(r["correct"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(job["result"]["evaluation"]["metrics"]["accuracy"])
    # /predict with the registered model agrees on the raw samples of those rows.
    raw = [X[row["index"]].tolist() for row in rows[:5]]
    served = http.post("/predict", json={"model": jid, "inputs": raw}).json()["predictions"]
    assert [p["label"] for p in served] == [row["predicted"] for row in rows[:5]]

    # Pages of 8 (a Link to each next one) cover the 30 rows once, in order; CSV, the same rows.
    paged, url = [], f"/jobs/{jid}/predictions?limit=8"
    while url:
        page = http.get(url)
        assert page.status_code == 200 and page.json()["count"] == 30, page.text
        paged += page.json()["predictions"]
        link = page.headers.get("link", "")
        url = link[1 : link.index(">")] if link else ""
    assert paged == rows
    with Client(stack.base_url, api_key="") as client:  # the client walks the same pages
        assert list(client.jobs.predictions(jid, page_size=7)) == rows
    table = list(csv.DictReader(io.StringIO(http.get(f"/jobs/{jid}/predictions?format=csv").text)))
    assert [int(t["index"]) for t in table] == [row["index"] for row in rows]
    assert [t["correct"] == "true" for t in table] == [row["correct"] for row in rows]

    r = http.get(f"/jobs/{jid}/predictions", params={"split": "val", "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert len(table) == 30 and list(table[0]) == [
        "index",
        "label",
        "class_name",
        "predicted",
        "predicted_class_name",
        "probability",
        "correct",
    ]
    val_index = {int(t["index"]) for t in table}
    assert not val_index & {row["index"] for row in rows}  # disjoint splits

    r = http.get(f"/jobs/{jid}/predictions", params={"split": "train"})
    assert r.status_code == 422 and "'val' or 'test'" in r.text, r.text
    r = http.get(f"/jobs/{jid}/predictions", params={"format": "xml"})
    assert r.status_code == 422 and "'json' or 'csv'" in r.text, r.text
    assert http.get("/jobs/nope/predictions").status_code == 404

    # No test split: 404 naming what there is.
    only_val = stack.wait(stack.submit(iris_spec())["id"], timeout=180)
    assert only_val["status"] == "succeeded", (only_val, stack.logs())
    r = http.get(f"/jobs/{only_val['id']}/predictions", params={"split": "test"})
    assert r.status_code == 404 and "available: val" in r.text, r.text
    assert http.get(f"/jobs/{only_val['id']}/predictions").json()["split"] == "val"

    # Not finished: 409.
    long = stack.submit(iris_spec() | {"training": {"epochs": 100000, "batch_size": 1}})
    r = http.get(f"/jobs/{long['id']}/predictions")
    assert r.status_code == 409 and "has succeeded" in r.text, r.text
    assert http.post(f"/jobs/{long['id']}/cancel").status_code == 200


def test_regression_predictions_and_predict_are_in_the_target_units(stack: Stack) -> None:
    spec = {
        "name": "diabetes-preds",
        "dataset": {"name": "diabetes", "val_fraction": 0.15, "test_fraction": 0.2},
        "model": {"arch": "mlp", "hidden": [32]},
        "training": {"epochs": 30, "optimizer": "adam", "lr": 0.003, "batch_size": 32},
    }
    job = stack.wait(stack.submit(spec)["id"], timeout=180)
    assert job["status"] == "succeeded", (job, stack.logs())
    body = stack.http.get(f"/jobs/{job['id']}/predictions", params={"split": "test"}).json()
    assert body["task"] == "regression"
    X, y = load_diabetes(return_X_y=True)
    rows = body["predictions"][:8]
    for row in rows:
        assert row["value"] == pytest.approx(y[row["index"]])
        assert row["error"] == pytest.approx(row["predicted"] - row["value"])
    raw = [X[row["index"]].tolist() for row in rows]
    served = stack.http.post("/predict", json={"model": job["id"], "inputs": raw}).json()
    values = [p["value"] for p in served["predictions"]]
    assert values == pytest.approx([row["predicted"] for row in rows], rel=1e-4)
    assert 100 < sum(values) / len(values) < 220  # the target's units (mean 152), not scaled
    card = stack.http.get(f"/models/{job['id']}/card").json()
    assert card["target_scaling"]["kind"] == "standard"
    assert card["weights"] == job["result"]["weights"]

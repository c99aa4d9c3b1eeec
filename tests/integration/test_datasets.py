"""Uploads through the real service (API + worker processes): a CSV with string class names is
uploaded, trained on with a held-out test split, predicted with by class name; a second identical
job reads its preprocessed tensors from the cache; a third fine-tunes the first with a frozen
backbone."""

from __future__ import annotations

import io
from typing import Any

import pytest

from tests.helpers.stack import Stack

pytestmark = pytest.mark.integration

CULTIVARS = ["barolo", "grignolino", "barbera"]


def wine_csv() -> tuple[bytes, list[list[float]], list[str]]:
    from sklearn.datasets import load_wine

    d = load_wine()
    names = [n.replace("/", "_") for n in d.feature_names]
    buf = io.StringIO()
    buf.write(",".join([*names, "cultivar"]) + "\n")
    for row, y in zip(d.data, d.target, strict=True):
        buf.write(",".join(f"{v:g}" for v in row) + f",{CULTIVARS[y]}\n")
    return buf.getvalue().encode(), d.data[:12].tolist(), [CULTIVARS[y] for y in d.target[:12]]


def wine_spec(dataset_id: str, name: str = "wine-upload", **model: Any) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": {"id": dataset_id, "val_fraction": 0.15, "test_fraction": 0.2},
        "model": {"arch": "mlp", "hidden": [32], **model},
        "training": {"epochs": 40, "batch_size": 16, "optimizer": "adam", "lr": 0.01, "seed": 0},
    }


@pytest.fixture(scope="module")
def uploaded(stack: Stack) -> dict[str, Any]:
    data, _, _ = wine_csv()
    r = stack.http.post(
        "/datasets",
        files={"file": ("wine.csv", data, "text/csv")},
        data={"target": "cultivar"},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


@pytest.fixture(scope="module")
def first_job(stack: Stack, uploaded: dict[str, Any]) -> dict[str, Any]:
    job = stack.submit(wine_spec(uploaded["id"]))
    return stack.wait(job["id"], timeout=180)


def stage(job: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in job["stages"] if s["name"] == name)


def test_upload_schema(uploaded: dict[str, Any]) -> None:
    schema = uploaded["schema"]
    assert schema["class_names"] == sorted(CULTIVARS)  # text labels: classes in sorted order
    assert schema["samples"] == 178 and schema["input_shape"] == [13]
    assert schema["class_counts"] == {"barbera": 48, "barolo": 59, "grignolino": 71}


def test_job_on_upload_evaluates_on_the_test_split(stack: Stack, first_job: dict[str, Any]) -> None:
    job = first_job
    assert job["status"] == "succeeded", (job, stack.logs())
    evaluation = job["result"]["evaluation"]
    assert evaluation["split"] == "test"
    assert evaluation["samples"] == pytest.approx(178 * 0.2, abs=2)
    assert evaluation["metrics"]["accuracy"] >= 0.85
    assert stage(job, "evaluate")["outputs"]["metrics"]["accuracy"] == pytest.approx(
        evaluation["metrics"]["accuracy"]
    )


def test_predict_answers_class_names(stack: Stack, first_job: dict[str, Any]) -> None:
    _, rows, truth = wine_csv()
    r = stack.http.post("/predict", json={"model": first_job["id"], "inputs": rows})
    assert r.status_code == 200, r.text
    names = [p["class_name"] for p in r.json()["predictions"]]
    assert set(names) <= set(CULTIVARS)
    assert sum(a == b for a, b in zip(names, truth, strict=True)) >= 10


def test_second_identical_job_hits_the_preprocess_cache(
    stack: Stack, uploaded: dict[str, Any], first_job: dict[str, Any]
) -> None:
    assert first_job["status"] == "succeeded"
    assert not (stage(first_job, "preprocess")["outputs"].get("cache") or {}).get("hit")
    again = stack.wait(stack.submit(wine_spec(uploaded["id"], "wine-again"))["id"], timeout=180)
    assert again["status"] == "succeeded", (again, stack.logs())
    assert stage(again, "preprocess")["outputs"]["cache"]["hit"] is True
    assert again["result"]["evaluation"]["samples"] == first_job["result"]["evaluation"]["samples"]


def test_fine_tune_from_the_first_job_with_a_frozen_backbone(
    stack: Stack, uploaded: dict[str, Any], first_job: dict[str, Any]
) -> None:
    spec = wine_spec(uploaded["id"], "wine-ft", init_from=first_job["id"], freeze="backbone")
    spec["training"]["epochs"] = 3
    job = stack.submit(spec)
    assert job["result"]["init_from"]["job_id"] == first_job["id"]
    done = stack.wait(job["id"], timeout=180)
    assert done["status"] == "succeeded", (done, stack.logs())
    assert done["result"]["init_from"]["kind"] == "model"
    transfer = stage(done, "train")["outputs"]["transfer"]
    assert transfer["start"] == "init_from" and transfer["frozen"]
    assert transfer["init"]["head"] == "loaded"  # same classes: the whole model carried over
    assert 0 < transfer["trainable_params"] < transfer["total_params"]
    # starting from a trained model, three epochs keep its accuracy
    assert done["result"]["evaluation"]["metrics"]["accuracy"] >= 0.8


def test_a_job_on_an_upload_whose_file_changed_or_went_names_the_dataset(stack: Stack) -> None:
    """The job's error names the upload as its submitter knows it (its name and id), never where
    its file is stored (the uploads directory, the sha256-named folder, a tenant's prefix)."""
    data = b"a,b,label\n" + b"".join(f"{i % 7},{i % 5},{'xy'[i % 2]}\n".encode() for i in range(40))
    r = stack.http.post(
        "/datasets",
        files={"file": ("tiny.csv", data, "text/csv")},
        data={"target": "label", "name": "tiny-upload"},
    )
    assert r.status_code == 201, r.text
    ds = r.json()
    [stored] = [
        p for p in (stack.data_dir / "artifacts" / "uploads").rglob("tiny.csv") if p.is_file()
    ]
    assert ds["sha256"] in str(stored)
    spec = {
        "name": "tiny-upload",
        "dataset": {"id": ds["id"], "val_fraction": 0},
        "model": {"arch": "mlp", "hidden": [4]},
        "training": {"epochs": 1, "batch_size": 8},
    }

    def error_of_a_job() -> dict[str, Any]:
        job = stack.wait(stack.submit(spec)["id"], timeout=120)
        assert job["status"] == "failed", (job, stack.logs())
        error = dict(job["error"])
        text = f"{error['message']} {error['hint']}"
        assert f"uploaded dataset 'tiny-upload' (id {ds['id']}) cannot be read: " in text, error
        assert error["message"].endswith("; upload it again") and "POST /datasets" in text
        for leak in ("TAS_", "tenants/", "datasets/", ds["sha256"], str(stack.data_dir)):
            assert leak not in text, (leak, error)
        assert "/" not in error["message"], error  # no path of any kind
        return error

    stored.write_bytes(data.replace(b"label", b"lab3l"))  # changed on disk since the upload
    changed = error_of_a_job()
    assert changed["type"] == "DataError" and "column 'label' not found" in changed["message"]
    stored.unlink()
    gone = error_of_a_job()
    assert gone["type"] == "DatasetNotFound" and "its file is missing" in gone["message"]

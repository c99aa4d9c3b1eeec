"""The jobs API in process: validation (every rejection names its field), queueing, listing, cancel."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.helpers.api import RecordingPublisher
from tests.helpers.specs import iris_spec


def test_post_job_queues_it_after_commit(client: TestClient, published: RecordingPublisher) -> None:
    r = client.post("/jobs", json=iris_spec(resources={"device": "cpu"}))
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["attempts"] == 0 and job["queue"] == "cpu"
    assert published.published == [(job["id"], "cpu")]
    # the published job is already readable: the row was committed before the publish
    assert client.get(f"/jobs/{job['id']}").json()["id"] == job["id"]
    assert job["spec"]["training"]["lr"] == 0.01


BAD = [
    (iris_spec(surprise=1), ["body", "surprise"], "extra"),
    (
        iris_spec(training={"batch_size": 0}),
        ["body", "training", "batch_size"],
        "greater than or equal to 1",
    ),
    (iris_spec(training={"lr": 0}), ["body", "training", "lr"], "greater than 0"),
    (iris_spec(training={"lr": -1}), ["body", "training", "lr"], "greater than 0"),
    (
        iris_spec(training={"epochs": 0}),
        ["body", "training", "epochs"],
        "greater than or equal to 1",
    ),
    (iris_spec(training={"optimizer": "rmsprop"}), ["body", "training", "optimizer"], "adam"),
    (iris_spec(training={"loss": "hinge"}), ["body", "training", "loss"], "cross_entropy"),
    (iris_spec(training={"scheduler": "warm"}), ["body", "training", "scheduler"], "cosine"),
    (iris_spec(training={"typo_lr": 1}), ["body", "training", "typo_lr"], "extra"),
    (iris_spec(dataset={"name": "imagenet"}), ["body", "dataset", "name"], "digits"),
    (iris_spec(model={"arch": "vgg"}), ["body", "model", "arch"], "mlp"),
    (
        iris_spec(dataset={"name": "digits"}, training={"loss": "bce"}),
        ["body", "training", "loss"],
        "at most 2 classes",
    ),
    (
        iris_spec(dataset={"name": "digits"}, training={"loss": "mse"}),
        ["body", "training", "loss"],
        "allowed for classification",
    ),
    (
        iris_spec(dataset={"name": "diabetes"}, training={"loss": "cross_entropy"}),
        ["body", "training", "loss"],
        "allowed for regression: mse",
    ),
    (
        iris_spec(dataset={"name": "wine"}, model={"arch": "cnn"}),
        ["body", "model", "arch"],
        "C×H×W",
    ),
    (  # 8×8 digits: ViT takes 224×224 only
        iris_spec(dataset={"name": "digits"}, model={"arch": "vit_b_16"}),
        ["body", "model", "arch"],
        "cannot take samples of shape [1, 8, 8] (Wrong image height! Expected 224",
    ),
    (
        iris_spec(model={"arch": "mlp", "pretrained": True}),
        ["body", "model", "pretrained"],
        "vit_b_16",
    ),
    (iris_spec(name="bad name/../x"), ["body", "name"], "pattern"),
    (iris_spec(dataset={"val_fraction": 1.5}), ["body", "dataset", "val_fraction"], "less than 1"),
    (iris_spec(model={"dropout": 1.0}), ["body", "model", "dropout"], "less than 1"),
    (
        iris_spec(model={"hidden": [0]}),
        ["body", "model", "hidden", 0],
        "greater than or equal to 1",
    ),
    (iris_spec(dataset={"id": "abc"}), ["body", "dataset"], "exactly one"),
]


@pytest.mark.parametrize(
    ("body", "loc", "says"), BAD, ids=[".".join(map(str, b[1][1:])) + ":" + b[2] for b in BAD]
)
def test_bad_spec_is_422_naming_the_field(
    client: TestClient,
    published: RecordingPublisher,
    body: dict[str, Any],
    loc: list[Any],
    says: str,
) -> None:
    r = client.post("/jobs", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(
        d["loc"][: len(loc)] == loc and says.lower() in (d["msg"] + d["type"]).lower()
        for d in detail
    ), detail
    assert published.published == []
    assert client.get("/jobs").json()["items"] == []


def test_uploaded_dataset_id_unknown_is_422(client: TestClient) -> None:
    body = iris_spec()
    body["dataset"] = {"id": "nope"}
    r = client.post("/jobs", json=body)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "dataset", "id"]


@pytest.mark.parametrize("raw", [b"{", b"[]", b'"x"', b"null", b'{"name": 5}', b"\xff\xfe"])
def test_garbage_bodies_are_4xx_not_500(client: TestClient, raw: bytes) -> None:
    r = client.post("/jobs", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text


def test_unknown_job_is_404_everywhere(client: TestClient) -> None:
    for method, path in [
        ("get", "/jobs/nope"),
        ("get", "/jobs/nope/metrics"),
        ("get", "/jobs/nope/checkpoints"),
        ("post", "/jobs/nope/cancel"),
        ("get", "/jobs/nope/events"),
        ("get", "/jobs/" + "a" * 32),
    ]:
        r = client.request(method, path)
        assert r.status_code == 404, (path, r.text)
        assert "not found" in r.json()["detail"]


def test_cancel_queued_job_then_conflict(client: TestClient) -> None:
    job = client.post("/jobs", json=iris_spec()).json()
    r = client.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled" and r.json()["finished_at"]
    again = client.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409
    assert "already cancelled" in again.json()["detail"]


def test_list_pages_without_gaps_or_repeats(client: TestClient) -> None:
    ids = [client.post("/jobs", json=iris_spec(name=f"j{i}")).json()["id"] for i in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    client.post(f"/jobs/{ids[0]}/cancel")
    cancelled = client.get("/jobs", params={"status": "cancelled"}).json()["items"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    assert client.get("/jobs", params={"limit": 0}).status_code == 422


def test_predict_rejections(client: TestClient) -> None:
    assert client.post("/predict", json={"model": "x", "inputs": []}).status_code == 422
    assert client.post("/predict", json={"model": "x"}).status_code == 422
    assert client.post("/predict", json={"model": "x", "inputs": [[1]]}).status_code == 404
    job = client.post("/jobs", json=iris_spec()).json()
    r = client.post("/predict", json={"model": job["id"], "inputs": [[1, 2, 3, 4]]})
    assert r.status_code == 409 and "queued" in r.json()["detail"]


def test_openapi_and_offline_docs_page(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}", "/predict", "/models"} <= set(schema["paths"])
    page = client.get("/docs").text
    assert "cdn" not in page.lower() and "/static-offline-docs/swagger-ui-bundle.js" in page
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200

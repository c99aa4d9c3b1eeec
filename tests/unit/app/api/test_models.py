"""The model registry: listing, aliases (the deploy step), deleting versions, path safety."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.helpers.registry import IMAGE_SHAPE, Registry

X = np.random.default_rng(0).random((1, *IMAGE_SHAPE)).tolist()


def predict(client: TestClient, ref: str) -> dict:
    r = client.post("/predict", json={"model": ref, "inputs": X})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_list_and_get_models(client: TestClient, registry: Registry) -> None:
    v1 = registry.add("m", seed=1)
    v2 = registry.add("m", seed=2)
    registry.add("other")
    assert client.put("/models/m/aliases/production", json={"version": 1}).status_code == 200
    models = client.get("/models").json()
    assert [m["name"] for m in models] == ["m", "other"]
    m = client.get("/models/m").json()
    assert m["latest_version"] == 2 and m["aliases"] == {"production": 1}
    versions = {v["version"]: v for v in m["versions"]}
    assert versions[1]["job_id"] == v1.job_id and versions[2]["job_id"] == v2.job_id
    assert versions[1]["aliases"] == ["production"] and versions[2]["aliases"] == []
    assert versions[2]["metrics"] == {"val_accuracy": 0.52} and versions[1]["created_at"]
    assert versions[1]["card"]["input_shape"] == list(IMAGE_SHAPE)
    assert client.get("/models/nope").status_code == 404


def test_every_reference_form(client: TestClient, registry: Registry) -> None:
    v1 = registry.add("m", seed=1)
    registry.add("m", seed=2)
    client.put("/models/m/aliases/prod", json={"version": 1})
    assert predict(client, "m")["model"]["version"] == 2
    assert predict(client, "m:1")["model"]["version"] == 1
    assert predict(client, "m@prod")["model"]["version"] == 1
    assert predict(client, v1.job_id)["model"] == {"name": "m", "version": 1, "job_id": v1.job_id}


def test_moving_an_alias_deploys_at_once_and_warms(
    client: TestClient, app: FastAPI, registry: Registry
) -> None:
    v1 = registry.add("m", seed=1)
    v2 = registry.add("m", seed=2)
    cache = app.state.serving.cache
    r = client.put("/models/m/aliases/production", json={"version": 1})
    assert r.status_code == 200 and r.json()["version"] == 1
    assert v1.model_dir in cache and v2.model_dir not in cache  # warmed by the deploy
    first = predict(client, "m@production")
    assert first["model"]["version"] == 1
    r = client.put("/models/m/aliases/production", json={"version": 2})
    assert r.status_code == 200 and r.json()["version"] == 2
    assert v2.model_dir in cache
    second = predict(client, "m@production")  # the very next prediction: no TTL wait, no restart
    assert second["model"]["version"] == 2
    assert second["predictions"] != first["predictions"]


def test_alias_rejections(client: TestClient, registry: Registry) -> None:
    registry.add("m")
    assert client.put("/models/m/aliases/p", json={"version": 9}).status_code == 404
    assert client.put("/models/nope/aliases/p", json={"version": 1}).status_code == 404
    assert client.put("/models/m/aliases/p", json={"version": 0}).status_code == 422
    assert client.put("/models/m/aliases/p", json={"version": 1, "x": 1}).status_code == 422
    assert client.put("/models/m/aliases/p", json={}).status_code == 422
    assert client.put("/models/m/aliases/a%5Cb", json={"version": 1}).status_code == 422
    assert 400 <= client.put("/models/m/aliases/..", json={"version": 1}).status_code < 500
    assert client.delete("/models/m/aliases/p").status_code == 404


def test_delete_alias(client: TestClient, registry: Registry) -> None:
    registry.add("m")
    client.put("/models/m/aliases/p", json={"version": 1})
    assert predict(client, "m@p")["model"]["version"] == 1
    assert client.delete("/models/m/aliases/p").status_code == 204
    assert client.post("/predict", json={"model": "m@p", "inputs": X}).status_code == 404
    assert client.delete("/models/m/aliases/p").status_code == 404


def test_delete_version_drops_aliases_and_evicts(
    client: TestClient, app: FastAPI, registry: Registry
) -> None:
    v1 = registry.add("m", seed=1)
    registry.add("m", seed=2)
    client.put("/models/m/aliases/old", json={"version": 1})
    predict(client, "m:1")
    cache = app.state.serving.cache
    assert v1.model_dir in cache
    assert client.delete("/models/m/versions/1").status_code == 204
    assert v1.model_dir not in cache
    for ref in ("m:1", "m@old", v1.job_id):
        assert client.post("/predict", json={"model": ref, "inputs": X}).status_code == 404
    m = client.get("/models/m").json()
    assert [v["version"] for v in m["versions"]] == [2] and m["aliases"] == {}
    assert client.delete("/models/m/versions/1").status_code == 404
    assert client.delete("/models/m/versions/2").status_code == 204
    assert client.get("/models/m").status_code == 404


def test_alias_history_lists_every_change_newest_first(
    client: TestClient, registry: Registry
) -> None:
    registry.add("m", seed=1)
    registry.add("m", seed=2)
    registry.add("m", seed=3)
    registry.add("mx")  # `m_x`'s `_` must not match it as a LIKE wildcard would
    registry.add("m_x")
    assert client.put("/models/m/aliases/prod", json={"version": 1}).status_code == 200
    assert client.put("/models/m/aliases/prod", json={"version": 2}).status_code == 200
    assert client.put("/models/m/aliases/canary", json={"version": 3}).status_code == 200
    assert client.put("/models/m/aliases/prod", json={"version": 9}).status_code == 404
    assert client.delete("/models/m/aliases/canary").status_code == 204
    assert client.delete("/models/m/versions/2").status_code == 204
    assert client.delete("/models/m/versions/1").status_code == 204  # no alias left on it
    assert client.put("/models/mx/aliases/prod", json={"version": 1}).status_code == 200
    history = client.get("/models/m/alias-history").json()
    assert [(e["action"], e["alias"], e["version"]) for e in history] == [
        ("version_deleted", "prod", 2),
        ("deleted", "canary", 3),
        ("set", "canary", 3),
        ("set", "prod", 2),
        ("set", "prod", 1),
    ]
    assert all(e["at"] for e in history)
    assert len(client.get("/models/m/alias-history?limit=2").json()) == 2
    assert client.get("/models/m_x/alias-history").json() == []
    assert client.get("/models/nope/alias-history").status_code == 404
    assert client.get("/models/m/alias-history?limit=0").status_code == 422


@pytest.mark.parametrize(
    "path",
    [
        "/models/..%2F..%2Fetc/versions/1/download",
        "/models/%2e%2e%2f%2e%2e%2fetc/versions/1/download",
        "/models/..%5C..%5Cetc/versions/1/download",
        "/models/m%5C..%5C..%5Cx/versions/1/card",
        "/models/../../etc/versions/1/download",
        "/models/m/versions/..%2F1/download",
        "/models/m/versions/1/download?format=..%2F..%2Fpasswd",
        "/models/file:%2F%2F%2Fetc%2Fpasswd/versions/1/download",
        "/models/.hidden/versions/1/card",
    ],
)
def test_traversal_attempts_are_4xx(client: TestClient, registry: Registry, path: str) -> None:
    registry.add("m")
    r = client.get(path)
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text)


def test_a_registry_row_outside_the_artifact_store_is_never_read(
    client: TestClient, registry: Registry
) -> None:
    from tas.store.orm import ModelVersion

    v = registry.add("m")
    with registry.sessions() as s:
        mv = s.query(ModelVersion).filter_by(job_id=v.job_id).one()
        mv.model_dir = v.model_dir + "/../../../../../../etc"
        s.commit()
    assert client.get("/models/m/versions/1/card").status_code == 404
    assert client.get("/models/m/versions/1/download").status_code == 404
    assert client.post("/predict", json={"model": "m", "inputs": X}).status_code == 404

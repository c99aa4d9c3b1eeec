"""Serving from the artifact store (TAS_ARTIFACT_URL set): an API process that never saw a local
file of the model answers /predict, the card, both downloads and the per-sample predictions from
the store through its own cache, its artifact directory staying empty; a corrupt or missing object
is a 502 naming the store (never a torn read, never a 500), a store that does not answer a 503;
deleting the version deletes its objects. Each test runs on a `file://` store in a directory of its
own (a remote store without S3) and on moto's S3 server."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from safetensors.torch import load as load_torch
from sqlalchemy import update

from tas.core.objstore import ObjectStore, open_bundle, write_bundle
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store.artifacts import open_artifacts
from tas.store.orm import ModelVersion
from tests.helpers.api import make_app, migrated_settings, running_client
from tests.helpers.registry import IMAGE_SHAPE, Registered, Registry
from tests.helpers.s3 import unreachable_store_url


@pytest.fixture
def settings(tmp_path: Path, remote_store_url: str) -> Settings:
    """The API's machine: its own data dir and cache, sharing only the database and the store."""
    return migrated_settings(
        tmp_path / "api", artifact_url=remote_store_url, local_cache_dir=tmp_path / "api-cache"
    )


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    return open_artifacts(settings).store


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return make_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with running_client(app) as c:
        yield c


@pytest.fixture
def worker(tmp_path: Path, settings: Settings) -> Registry:
    """Models trained "on another machine": written to a data dir of their own, registered in
    the shared database."""
    return Registry(
        Settings(data_dir=tmp_path / "worker", database_url=settings.resolved_database_url)
    )


def publish(
    worker: Registry, store: ObjectStore, name: str, **kw: object
) -> tuple[Registered, str]:
    """A model registered as a worker with a remote store leaves it: its files pushed as the
    bundle `<job key>/model`, the registry row naming that key, the worker's scratch gone."""
    reg = worker.add(name, **kw)  # type: ignore[arg-type]
    key = f"{job_store.job_key(reg.job_id, tenant='default')}/model"
    with write_bundle(store, key) as bundle:
        for path in sorted(Path(reg.model_dir).iterdir()):
            bundle.put_file(path.name, path)
        bundle.commit()
    shutil.rmtree(Path(reg.model_dir).parent)
    with worker.sessions() as s:
        s.execute(
            update(ModelVersion).where(ModelVersion.job_id == reg.job_id).values(model_dir=key)
        )
        s.commit()
    return reg, key


def local_files(settings: Settings) -> list[Path]:
    return [p for p in settings.resolved_artifact_dir.rglob("*") if p.is_file()]


X = np.random.default_rng(0).random((3, *IMAGE_SHAPE), dtype=np.float32)


def test_predict_card_and_downloads_from_the_store(
    client: TestClient, worker: Registry, store: ObjectStore, settings: Settings
) -> None:
    reg, _ = publish(worker, store, "m", hidden=(8,))
    r = client.post("/predict", json={"model": "m", "inputs": X.tolist()})
    assert r.status_code == 200, r.text
    got = [p["probabilities"] for p in r.json()["predictions"]]
    np.testing.assert_allclose(got, torch.softmax(reg.reference(X), 1).numpy(), atol=1e-5)
    card = client.get("/models/m/versions/1/card")
    assert card.status_code == 200, card.text
    assert card.json()["job_id"] == reg.job_id and card.json()["input_shape"] == list(IMAGE_SHAPE)
    assert client.get("/models/m@nope/card").status_code == 404
    assert client.get("/models/m:1/card").json() == card.json()
    weights = client.get("/models/m/versions/1/download")
    assert weights.status_code == 200, weights.text
    tensors = load_torch(weights.content)
    assert all(torch.equal(tensors[k], v) for k, v in reg.model.state_dict().items())
    exported = client.get("/models/m/download", params={"format": "onnx"})
    assert exported.status_code == 200, exported.text
    proto = onnx.load_from_string(exported.content)
    assert json.loads({p.key: p.value for p in proto.metadata_props}["tas.card"])["out_dim"] == 3
    # Everything came from the store through the cache: the API's artifact dir holds no file.
    assert local_files(settings) == []
    assert open_artifacts(settings).cache.stats().entries >= 1


def test_job_predictions_from_the_store(
    client: TestClient, worker: Registry, store: ObjectStore, settings: Settings
) -> None:
    reg, _ = publish(worker, store, "m")
    r = client.get(f"/jobs/{reg.job_id}/predictions")
    assert r.status_code == 404 and "available: none" in r.json()["detail"]
    arrays = {
        "index": np.array([4, 1], np.int64),
        "label": np.array([0, 2], np.int64),
        "predicted": np.array([0, 1], np.int64),
        "probability": np.array([0.9, 0.6], np.float32),
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    with write_bundle(store, f"{job_store.job_key(reg.job_id, tenant='default')}/predictions") as b:
        b.put_bytes("val.npz", buf.getvalue())
        b.commit()
    r = client.get(f"/jobs/{reg.job_id}/predictions")
    assert r.status_code == 200, r.text
    assert r.json()["split"] == "val" and [p["index"] for p in r.json()["predictions"]] == [4, 1]
    assert client.get(f"/jobs/{reg.job_id}/predictions?split=test").status_code == 404
    csv = client.get(f"/jobs/{reg.job_id}/predictions?format=csv")
    assert csv.status_code == 200 and csv.text.startswith("index,")
    assert local_files(settings) == []


def test_a_corrupt_object_is_a_502_naming_the_store_and_is_never_read(
    client: TestClient, worker: Registry, store: ObjectStore, settings: Settings
) -> None:
    _, key = publish(worker, store, "m")
    bundle = open_bundle(store, key)
    original = store.get_bytes(bundle.key("model.safetensors"))
    flipped = bytearray(original)
    flipped[-1] ^= 0xFF  # same size: only the sha256 tells
    store.put_bytes(bundle.key("model.safetensors"), bytes(flipped))
    for method, url, body in (
        ("POST", "/predict", {"model": "m", "inputs": X.tolist()}),
        ("GET", "/models/m/versions/1/card", None),
        ("GET", "/models/m/versions/1/download", None),
    ):
        r = client.request(method, url, json=body)
        assert r.status_code == 502, r.text
        assert "artifact store" in r.json()["detail"] and key in r.json()["detail"]
        assert "corrupt" in r.json()["detail"]
    # Nothing torn reached the cache or the artifact dir, and the model was not loaded.
    cache = open_artifacts(settings).cache
    assert cache.stats().entries == 0 and local_files(settings) == []
    # Restored, it is served (an error is not remembered).
    store.put_bytes(bundle.key("model.safetensors"), original)
    assert client.post("/predict", json={"model": "m", "inputs": X.tolist()}).status_code == 200


def test_a_missing_manifest_is_a_502(
    client: TestClient, worker: Registry, store: ObjectStore
) -> None:
    _, key = publish(worker, store, "m")
    store.delete(f"{key}/_manifest.json")
    r = client.get("/models/m/versions/1/download")
    assert r.status_code == 502 and "no committed copy" in r.json()["detail"], r.text
    r = client.post("/predict", json={"model": "m", "inputs": X.tolist()})
    assert r.status_code == 502 and key in r.json()["detail"], r.text


def test_deleting_the_version_deletes_its_objects_only(
    client: TestClient, worker: Registry, store: ObjectStore
) -> None:
    reg, key = publish(worker, store, "m", seed=1)
    _, other = publish(worker, store, "m", seed=2)
    job_key = job_store.job_key(reg.job_id, tenant="default")
    store.put_bytes(f"{job_key}/checkpoints/keep.bin", b"the job's, not the version's")
    assert client.post("/predict", json={"model": "m:1", "inputs": X.tolist()}).status_code == 200
    assert client.delete("/models/m/versions/1").status_code == 204
    assert store.list_objects(key) == []
    assert store.exists(f"{job_key}/checkpoints/keep.bin")
    assert open_bundle(store, other).names() == ["card.json", "model.safetensors"]
    assert client.post("/predict", json={"model": "m:1", "inputs": X.tolist()}).status_code == 404
    assert client.post("/predict", json={"model": "m", "inputs": X.tolist()}).status_code == 200


def test_an_unreachable_store_is_a_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An S3 endpoint where nothing listens: the API answers 503 with Retry-After (not a 500)."""
    url = unreachable_store_url(monkeypatch.setenv)
    settings = migrated_settings(
        tmp_path / "api", artifact_url=url, local_cache_dir=tmp_path / "cache"
    )
    worker = Registry(
        Settings(data_dir=tmp_path / "worker", database_url=settings.resolved_database_url)
    )
    reg = worker.add("m")
    with worker.sessions() as s:
        s.execute(
            update(ModelVersion)
            .where(ModelVersion.job_id == reg.job_id)
            .values(model_dir=f"jobs/{reg.job_id}/model")
        )
        s.commit()
    with running_client(make_app(settings)) as client:
        r = client.get("/models/m/versions/1/card")
    assert r.status_code == 503, r.text
    assert "artifact store did not answer" in r.json()["detail"] and r.headers["retry-after"]


def test_a_failed_object_deletion_still_deletes_the_version(
    client: TestClient,
    worker: Registry,
    store: ObjectStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The row goes with the commit; a store failing afterwards is logged, not a failed request
    (what it left is only space, removed with the job's prefix)."""
    _, key = publish(worker, store, "m")

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("the store did not answer")

    original = type(store).delete
    monkeypatch.setattr(type(store), "delete", broken)
    assert client.delete("/models/m/versions/1").status_code == 204
    assert client.get("/models/m").status_code == 404
    assert "could not delete the model bundle" in caplog.text
    monkeypatch.setattr(type(store), "delete", original)
    assert open_bundle(store, key).names() == ["card.json", "model.safetensors"]


def test_the_api_machines_own_cache_failing_is_not_blamed_on_the_store(
    client: TestClient,
    worker: Registry,
    store: ObjectStore,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cache's own disk failing (full) is the server's fault: a 500 with nothing internal in
    it, not a 503 telling the client to retry against a store that answered."""
    import errno

    from tas.core.objstore import Bundle

    publish(worker, store, "m")

    def disk_full(self: Bundle, name: str, path: Path | str) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    original = Bundle.fetch
    monkeypatch.setattr(Bundle, "fetch", disk_full)
    r = client.get("/models/m/versions/1/card")
    assert r.status_code == 500 and "artifact store" not in r.text
    monkeypatch.setattr(Bundle, "fetch", original)
    assert client.get("/models/m/versions/1/card").status_code == 200

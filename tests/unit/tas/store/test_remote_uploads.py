"""Uploaded datasets and weights with an artifact store (TAS_ARTIFACT_URL set): received into a
temp file, streamed to a content-addressed object, the API keeping no copy; read back on another
machine (its own data dir and cache, sharing only the database and the store) through its cache,
verified; deleted with their row. Each test runs on a `file://` store and on moto's S3 server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors.torch
import torch
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tas.core.data.dataset import LoadContext
from tas.core.errors import DataError
from tas.core.objstore import ObjectStore
from tas.core.spec import DatasetSpec
from tas.settings import Settings
from tas.store import datasets as dataset_store
from tas.store import files as file_store
from tas.store import sources
from tas.store.artifacts import open_artifacts
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.orm import Dataset, WeightsFile
from tests.helpers.api import make_app, migrated_settings, running_client

CSV = b"a,b,label\n" + b"".join(f"{i},{i * 2 % 7},{'xy'[i % 2]}\n".encode() for i in range(40))


@pytest.fixture
def settings(tmp_path: Path, remote_store_url: str) -> Settings:
    """The API's machine."""
    return migrated_settings(
        tmp_path / "api", artifact_url=remote_store_url, local_cache_dir=tmp_path / "api-cache"
    )


@pytest.fixture
def worker_settings(tmp_path: Path, settings: Settings, remote_store_url: str) -> Settings:
    """Another machine: its own data dir and cache; the same database and store."""
    s = Settings(
        data_dir=tmp_path / "worker",
        database_url=settings.resolved_database_url,
        artifact_url=remote_store_url,
        local_cache_dir=tmp_path / "worker-cache",
    )
    s.ensure_dirs()
    return s


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with running_client(make_app(settings)) as c:
        yield c


def store_of(settings: Settings) -> ObjectStore:
    return open_artifacts(settings).store


def local_files(settings: Settings) -> list[Path]:
    """Files the API process kept under its uploads directory (temp files included)."""
    root = settings.resolved_uploads_dir
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_a_dataset_upload_becomes_an_object_and_the_api_keeps_no_copy(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    r = client.post("/datasets", files={"file": ("t.csv", CSV, "text/csv")})
    assert r.status_code == 201, r.text
    ds = r.json()
    sha = hashlib.sha256(CSV).hexdigest()
    assert ds["sha256"] == sha and ds["size_bytes"] == len(CSV)
    key = f"uploads/datasets/{sha}/t.csv"
    assert store_of(settings).get_bytes(key) == CSV
    assert local_files(settings) == []
    # the same bytes again: the existing dataset, one object
    again = client.post("/datasets", files={"file": ("t.csv", CSV, "text/csv")})
    assert again.status_code == 200 and again.json()["id"] == ds["id"]
    assert [o.key for o in store_of(settings).list_objects("uploads")] == [key]
    assert local_files(settings) == []
    # a repeat puts back an object that went missing
    store_of(settings).delete(key)
    assert client.post("/datasets", files={"file": ("t.csv", CSV, "text/csv")}).status_code == 200
    assert store_of(settings).get_bytes(key) == CSV
    # deleting the dataset deletes its object
    assert client.delete(f"/datasets/{ds['id']}").status_code == 204
    assert store_of(settings).list_objects("uploads") == []


def test_another_machine_reads_the_dataset_through_its_cache(
    client: TestClient,
    settings: Settings,
    worker_settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    ds = client.post("/datasets", files={"file": ("t.csv", CSV, "text/csv")}).json()
    with sessions() as s:
        source = dataset_store.data_source(
            s, DatasetSpec(id=ds["id"]), tenant="default", settings=worker_settings
        )
    assert source.path is None  # nothing local to check: the loader fetches
    loaded = source.load(LoadContext(worker_settings.resolved_datasets_dir))
    assert len(loaded.train) == 40 and loaded.train.X.shape == (40, 2)
    assert loaded.notes["filename"] == "t.csv"
    cached = list((worker_settings.object_cache_dir / "entries").rglob("t.csv"))
    assert len(cached) == 1 and cached[0].read_bytes() == CSV
    # the worker's machine has no uploads of its own
    assert local_files(worker_settings) == []


def test_a_missing_or_altered_object_fails_the_load_saying_so(
    client: TestClient,
    settings: Settings,
    worker_settings: Settings,
    sessions: sessionmaker[Session],
    remote_store_url: str,
) -> None:
    """The job's error names the upload by its name and id, not by its key in the store."""
    ds = client.post("/datasets", files={"file": ("t.csv", CSV, "text/csv")}).json()
    key = f"uploads/datasets/{ds['sha256']}/t.csv"
    with sessions() as s:
        source = dataset_store.data_source(
            s, DatasetSpec(id=ds["id"]), tenant="default", settings=worker_settings
        )
    ctx = LoadContext(worker_settings.resolved_datasets_dir)
    named = f"uploaded dataset {ds['name']!r} (id {ds['id']}) cannot be read: "
    store_of(settings).put_bytes(key, CSV.replace(b"label", b"lab3l"))  # same size, other bytes
    with pytest.raises(DataError, match="not the file uploaded") as err:
        source.load(ctx)
    assert "POST /datasets" in (err.value.hint or "")
    assert named in err.value.message and err.value.message.endswith("; upload it again")
    store_of(settings).delete(key)
    with pytest.raises(DataError, match="missing from the artifact store") as err:
        source.load(ctx)
    assert named in err.value.message
    # the key (the tenant's prefix, the sha256) stays in the cause, for the server's log only
    assert isinstance(err.value.__cause__, file_store.StoredFileMissing)
    assert key in str(err.value.__cause__)
    for leak in (ds["sha256"], "uploads/", "t.csv", "TAS_", remote_store_url):
        assert leak not in err.value.message, leak
    assert "/" not in err.value.message
    assert not any((worker_settings.object_cache_dir / "entries").rglob("t.csv"))


def test_another_tenants_uploads_live_under_its_prefix(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    spool = file_store.Spool(file_store.tmp_dir(settings), 1 << 20)
    spool.write(CSV)
    spool.finish()
    with spool, sessions() as s:
        row, created = dataset_store.add_dataset(
            s,
            settings,
            tenant="team-b",
            name="t",
            file_name="t.csv",
            spool=spool,
            schema={"format": "csv", "options": {"target": "label"}},
        )
        s.commit()
    assert created and row.path.startswith("tenants/team-b/datasets/")
    key = f"tenants/team-b/uploads/datasets/{spool.sha256}/t.csv"
    assert file_store.upload_key(row.path) == key
    assert store_of(settings).get_bytes(key) == CSV
    assert not spool.path.exists()


def test_weights_are_an_object_and_init_from_reads_them_on_another_machine(
    client: TestClient,
    settings: Settings,
    worker_settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    data = safetensors.torch.save({"a.weight": torch.arange(12.0).reshape(3, 4)})
    r = client.post("/weights", files={"file": ("w.safetensors", data, "application/x")})
    assert r.status_code == 201, r.text
    w = r.json()
    key = f"uploads/weights/{w['sha256']}.safetensors"
    assert store_of(settings).get_bytes(key) == data
    assert local_files(settings) == []
    with sessions() as s:
        found = sources.resolve_init_source(s, "default", f"weights:{w['id']}", worker_settings)
    assert found.path.read_bytes() == data
    assert found.path.is_relative_to(worker_settings.object_cache_dir)
    store_of(settings).delete(key)
    again = client.post("/weights", files={"file": ("w.safetensors", data, "application/x")})
    assert again.status_code == 200  # the repeat puts the object back
    assert store_of(settings).get_bytes(key) == data
    assert client.delete(f"/weights/{w['id']}").status_code == 204  # and its object with it
    assert not store_of(settings).exists(key)
    assert client.post("/weights", files={"file": ("w", data, "application/x")}).status_code == 201
    store_of(settings).delete(key)
    # a fresh machine, nothing cached: the pin fails as a missing source
    other = worker_settings.model_copy(
        update={"local_cache_dir": worker_settings.data_dir / "other-cache"}
    )
    with sessions() as s:
        with pytest.raises(sources.InitSourceError, match="missing from the store"):
            sources.resolve_pinned(s, "default", found.pinned, other)
        assert s.query(WeightsFile).count() == 1 and s.query(Dataset).count() == 0


def test_a_model_versions_weights_are_read_from_its_bundle(
    settings: Settings, worker_settings: Settings
) -> None:
    """A model version's `model_dir` is its bundle's key with a store: init_from reads the weights
    object through the cache, verified by the bundle's manifest; no bundle is no weights."""
    from tas.core.objstore import write_bundle

    data = safetensors.torch.save({"w": torch.ones(2)})
    with write_bundle(store_of(settings), "jobs/j1/model") as bundle:
        bundle.put_bytes("model.safetensors", data)
        bundle.put_bytes("card.json", b"{}")
        bundle.commit()
    path = sources.model_weights(worker_settings, "jobs/j1/model")
    assert path is not None and path.read_bytes() == data
    assert path.is_relative_to(worker_settings.object_cache_dir)
    assert sources.model_weights(worker_settings, "jobs/j2/model") is None


def test_a_store_that_fails_is_the_upstreams_error_and_nothing_is_recorded(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that does not answer is a 503 to retry, one that keeps other bytes a 502; neither
    leaves a row, an object or a temp file."""

    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr(type(store_of(settings)), "put_file", unreachable)
    r = client.post("/datasets", files={"file": ("t.csv", CSV, "text/csv")})
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] and "send it again" in r.text
    r = client.post("/weights", files={"file": ("w.safetensors", b"x", "application/x")})
    assert r.status_code == 422  # checked before anything is stored

    real_sha = hashlib.sha256

    def other_bytes(self: object, key: str, path: Path) -> object:
        from tas.core.objstore import ObjectStat

        return ObjectStat(key, len(CSV), real_sha(b"other").hexdigest())

    monkeypatch.setattr(type(store_of(settings)), "put_file", other_bytes)
    monkeypatch.setattr(type(store_of(settings)), "delete", lambda self, key: None)
    r = client.post("/datasets", files={"file": ("t.csv", CSV, "text/csv")})
    assert r.status_code == 502, r.text
    assert all(d["builtin"] for d in client.get("/datasets").json()["items"])
    assert local_files(settings) == []


def test_a_job_on_another_machine_trains_on_the_uploaded_dataset(
    client: TestClient, worker_settings: Settings
) -> None:
    """The worker's side end to end: a job run on a machine that has nothing but the database and
    the store reads the upload through its cache and trains."""
    from tas.store import jobs as job_store
    from tas.store.orm import Job
    from worker.claim import run_job

    rows = b"".join(f"{i % 5},{(i * 3) % 7},{'xy'[i % 2]}\n".encode() for i in range(200))
    ds = client.post("/datasets", files={"file": ("t.csv", b"a,b,label\n" + rows, "text/csv")})
    assert ds.status_code == 201, ds.text
    engine = make_engine(worker_settings.resolved_database_url)
    sessions = make_sessionmaker(engine)
    spec = {
        "name": "remote-upload",
        "dataset": {"id": ds.json()["id"], "test_fraction": 0.2},
        "model": {"arch": "mlp", "hidden": [4]},
        "training": {"epochs": 1, "batch_size": 32},
    }
    with sessions() as s:
        job_id = job_store.create_job(s, spec, tenant="default", max_attempts=1).id
        s.commit()
    settings = worker_settings.model_copy(update={"device": "cpu"})
    outcome = run_job(job_id, settings=settings, sessions=sessions, owner="m2")
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        assert outcome.status == "succeeded", job.error
    engine.dispose()
    assert any((worker_settings.object_cache_dir / "entries").rglob("t.csv"))

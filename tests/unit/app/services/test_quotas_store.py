"""The storage quota with an artifact store (TAS_ARTIFACT_URL set): a tenant's job files live as
objects under its jobs prefix in the store, not in the API's artifact directory, and count against
its quota as a local tenant's job directories do. Each test runs on a `file://` store (a remote
store without S3) and on moto's S3 server."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tas.core.objstore import ObjectStore, write_bundle
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store import usage as usage_store
from tas.store.artifacts import open_artifacts
from tas.store.orm import Job
from tests.helpers.api import RecordingPublisher, make_app, migrated_settings, running_client
from tests.helpers.s3 import unreachable_store_url
from tests.helpers.specs import iris_spec

MIB = 2**20


@pytest.fixture
def settings(tmp_path: Path, remote_store_url: str) -> Settings:
    """The API's machine with a 1 MiB quota: its own data dir and cache, sharing only the
    database and the store with the workers."""
    return migrated_settings(
        tmp_path / "api",
        artifact_url=remote_store_url,
        local_cache_dir=tmp_path / "api-cache",
        max_stored_mb_per_tenant=1,
    )


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    return open_artifacts(settings).store


def job_objects(store: ObjectStore, tenant: str, job_id: str, size: int) -> None:
    """What a worker with a remote store leaves of a job: a checkpoint bundle, the model bundle
    and the predictions bundle under the job's key, `size` bytes of checkpoint among them."""
    key = job_store.job_key(job_id, tenant=tenant)
    for name, files in (
        ("checkpoints/ckpt-000001", {"state.pt": b"\0" * size}),
        ("model", {"model.safetensors": b"w" * 100, "card.json": b"{}"}),
        ("predictions", {"val.npz": b"p" * 100}),
    ):
        with write_bundle(store, f"{key}/{name}") as bundle:
            for file_name, data in files.items():
                bundle.put_bytes(file_name, data)
            bundle.commit()


def submit(client: Any) -> Any:
    return client.post("/jobs", json=iris_spec())


def upload(client: Any, data: bytes) -> Any:
    return client.post(
        "/datasets", files={"file": ("d.csv", io.BytesIO(data), "text/csv")}, data={"target": "a"}
    )


def local_files(settings: Settings) -> list[Path]:
    return [p for p in settings.resolved_artifact_dir.rglob("*") if p.is_file()]


def test_a_tenants_objects_in_the_store_count_and_over_the_quota_it_is_refused(
    settings: Settings, store: ObjectStore, published: RecordingPublisher
) -> None:
    """Nothing of the job is on the API's disk; its objects in the store fill the quota, so a
    submit is a 429 and an upload a 413 naming the figure, as for a local tenant."""
    job_objects(store, "default", "f" * 32, 3 * MIB // 2)
    job_objects(store, "team-b", "e" * 32, 5 * MIB)  # another tenant's: not counted
    assert local_files(settings) == []
    used = usage_store.artifact_bytes(settings, "default")
    assert 3 * MIB // 2 < used < 3 * MIB // 2 + 4096  # the checkpoint, model, predictions
    assert used == sum(o.size for o in store.list_objects("jobs"))
    with running_client(make_app(settings, published)) as client:
        r = submit(client)
        assert r.status_code == 429, r.text
        assert int(r.headers["Retry-After"]) > 0
        assert (
            "tenant 'default' stores 1.5 MiB of its 1 MiB (TAS_MAX_STORED_MB_PER_TENANT)"
            in (r.json()["detail"])
        )
        r = upload(client, b"a,b\n1,2\n")
        assert r.status_code == 413, r.text
        assert "TAS_MAX_STORED_MB_PER_TENANT" in r.text
        with client.app.state.sessions() as s:  # type: ignore[attr-defined]
            assert s.scalar(select(func.count()).select_from(Job)) == 0
        assert published.published == []


def test_another_tenants_objects_and_the_uploads_prefix_do_not_count(
    settings: Settings, store: ObjectStore
) -> None:
    job_objects(store, "team-b", "e" * 32, 2 * MIB)
    store.put_bytes("uploads/datasets/" + "a" * 64 + "/d.csv", b"\0" * 2 * MIB)  # no row
    with running_client(make_app(settings)) as client:
        assert submit(client).status_code == 201


def test_deleting_a_job_deletes_its_objects_and_makes_room_at_once(
    settings: Settings, store: ObjectStore
) -> None:
    with running_client(make_app(settings)) as client:
        job_id = submit(client).json()["id"]
        assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
        job_objects(store, "default", job_id, 2 * MIB)
        usage_store.forget_walk(  # as if the worker's objects had been there all along
            job_store.jobs_root(settings.resolved_artifact_dir, "default")
        )
        assert submit(client).status_code == 429
        assert client.delete(f"/jobs/{job_id}").status_code == 204
        assert store.list_objects(job_store.job_key(job_id, tenant="default")) == []
        assert submit(client).status_code == 201


def unreachable_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> Settings:
    """An S3 endpoint where nothing listens (one attempt per request, so the test is quick)."""
    url = unreachable_store_url(monkeypatch.setenv)
    return migrated_settings(
        tmp_path / "api", artifact_url=url, local_cache_dir=tmp_path / "cache", **kw
    )


def test_a_store_that_does_not_answer_while_measuring_is_a_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither a 500 nor a figure of 0 that would let the tenant past its quota."""
    settings = unreachable_settings(tmp_path, monkeypatch, max_stored_mb_per_tenant=1)
    with running_client(make_app(settings)) as client:
        r = submit(client)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] and "artifact store did not answer" in r.text
        assert "TAS_MAX_STORED_MB_PER_TENANT" in r.text
        assert upload(client, b"a,b\n1,2\n").status_code == 503
        with client.app.state.sessions() as s:  # type: ignore[attr-defined]
            assert s.scalar(select(func.count()).select_from(Job)) == 0

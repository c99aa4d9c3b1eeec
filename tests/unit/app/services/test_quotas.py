"""Per-tenant quotas through the routes: queued + running jobs (submit, clone, resume) and stored
bytes (uploads, and a submit while over). Each refusal has the right status and names the figure,
the limit and the setting; nothing is added or published for a refused request."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.services import jobs as job_service
from app.services.quotas import size_text
from tas.core.spec import JobSpec
from tas.errors import TooManyRequests
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store import usage as usage_store
from tas.store.orm import Dataset, Job
from tests.helpers.api import RecordingPublisher, make_app, migrated_settings, running_client
from tests.helpers.specs import iris_spec

LIMIT = 2


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(tmp_path, max_active_jobs_per_tenant=LIMIT)


def submit(client: TestClient) -> Any:
    return client.post("/jobs", json=iris_spec())


def jobs_in_db(client: TestClient) -> int:
    with client.app.state.sessions() as s:  # type: ignore[attr-defined]
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def assert_jobs_quota_refusal(r: Any, active: int = LIMIT) -> None:
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) > 0
    detail = r.json()["detail"]
    assert f"has {active} queued or running jobs" in detail, detail
    assert f"the most it may have is {LIMIT}" in detail, detail
    assert "TAS_MAX_ACTIVE_JOBS_PER_TENANT" in detail, detail
    assert "'default'" in detail, detail


def test_a_submit_beyond_the_active_jobs_quota_is_a_429_naming_it(
    client: TestClient, published: RecordingPublisher
) -> None:
    ids = [submit(client).json()["id"] for _ in range(LIMIT)]
    r = submit(client)
    assert_jobs_quota_refusal(r)
    assert jobs_in_db(client) == LIMIT
    assert [job_id for job_id, _ in published.published] == ids

    # A finished job gives its slot back.
    assert client.post(f"/jobs/{ids[0]}/cancel").status_code == 200
    assert submit(client).status_code == 201


def test_a_running_job_holds_a_slot_as_a_queued_one_does(client: TestClient) -> None:
    ids = [submit(client).json()["id"] for _ in range(LIMIT)]
    with client.app.state.sessions() as s:  # type: ignore[attr-defined]
        for job_id in ids:
            job = s.get(Job, job_id)
            assert job is not None
            job.status = "running"
        s.commit()
    assert_jobs_quota_refusal(submit(client))


def test_clone_and_resume_take_a_slot_too(client: TestClient) -> None:
    first = submit(client).json()["id"]
    assert client.post(f"/jobs/{first}/cancel").status_code == 200
    for _ in range(LIMIT):
        assert submit(client).status_code == 201

    assert_jobs_quota_refusal(client.post(f"/jobs/{first}/clone", json={}))
    r = client.post(f"/jobs/{first}/resume")
    assert_jobs_quota_refusal(r)
    assert client.get(f"/jobs/{first}").json()["status"] == "cancelled"
    assert jobs_in_db(client) == LIMIT + 1


def test_the_quota_is_per_tenant(client: TestClient, settings: Settings) -> None:
    for _ in range(LIMIT):
        assert submit(client).status_code == 201
    sessions = client.app.state.sessions  # type: ignore[attr-defined]
    spec = JobSpec.model_validate(iris_spec())
    with sessions() as s:
        for _ in range(LIMIT):
            job_service.submit(s, spec, tenant="team-b", max_attempts=1, settings=settings)
        s.commit()
    with sessions() as s, pytest.raises(TooManyRequests, match="tenant 'team-b' has 2"):
        job_service.submit(s, spec, tenant="team-b", max_attempts=1, settings=settings)
    with sessions() as s:
        assert job_store.active_jobs(s, "team-b") == LIMIT
        assert job_store.active_jobs(s, "default") == LIMIT
        assert job_store.active_jobs(s, "team-c") == 0


# ---------------------------------------------------------------------------------------------
# Stored bytes.


def csv_bytes(rows: int) -> bytes:
    lines = ["a,b,label"] + [f"{i},{i * 2},{i % 2}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def upload(client: TestClient, data: bytes, name: str = "d.csv") -> Any:
    return client.post(
        "/datasets",
        files={"file": (name, io.BytesIO(data), "text/csv")},
        data={"target": "label"},
    )


def make_stored(tmp_path: Path, mb: int, **overrides: Any) -> Settings:
    return migrated_settings(tmp_path, max_stored_mb_per_tenant=mb, **overrides)


def job_files(settings: Settings, tenant: str, size: int) -> None:
    """A job directory of the tenant's holding `size` bytes, as a worker would leave it."""
    d = job_store.job_dir(settings.resolved_artifact_dir, "f" * 32, tenant=tenant)
    (d / "checkpoints").mkdir(parents=True)
    (d / "checkpoints" / "epoch-1.safetensors").write_bytes(b"\0" * size)


@pytest.mark.parametrize("stored", [1, 2])
def test_an_upload_past_the_storage_quota_is_a_413_with_the_figure(
    tmp_path: Path, stored: int, published: RecordingPublisher
) -> None:
    """1: the tenant's jobs already fill the quota (refused before the body is read); 2: the
    upload itself does not fit in what is left (refused while it streams)."""
    settings = make_stored(tmp_path, 1)
    job_files(settings, "default", (2**20 if stored == 1 else 2**19) + 10)
    data = csv_bytes(60_000)  # ~0.8 MiB, over the half MiB left in case 2
    with running_client(make_app(settings, published)) as client:
        r = upload(client, data)
        assert r.status_code == 413, r.text
        [problem] = r.json()["detail"]
        assert problem["loc"] == ["body", "file"]
        msg = problem["msg"]
        assert "tenant 'default' stores" in msg, msg
        assert "of its 1 MiB (TAS_MAX_STORED_MB_PER_TENANT)" in msg, msg
        if stored == 2:
            assert "does not fit in the" in msg, msg
        with client.app.state.sessions() as s:  # type: ignore[attr-defined]
            assert s.scalar(select(func.count()).select_from(Dataset)) == 0
    leftovers = list((settings.resolved_uploads_dir / ".tmp").glob("*"))
    assert leftovers == []


def test_uploads_count_against_the_quota_and_a_small_one_fits(
    tmp_path: Path, published: RecordingPublisher
) -> None:
    settings = make_stored(tmp_path, 1)
    with running_client(make_app(settings, published)) as client:
        first = upload(client, csv_bytes(40_000), "a.csv")  # ~0.5 MiB
        assert first.status_code == 201, first.text
        second = upload(client, csv_bytes(41_000), "b.csv")  # does not fit beside it
        assert second.status_code == 413, second.text
        assert "TAS_MAX_STORED_MB_PER_TENANT" in second.text
        small = upload(client, csv_bytes(100), "c.csv")
        assert small.status_code == 201, small.text


def test_a_submit_while_over_the_storage_quota_is_a_429_with_the_figure(
    tmp_path: Path, published: RecordingPublisher
) -> None:
    settings = make_stored(tmp_path, 1)
    job_files(settings, "default", 3 * 2**20 // 2)
    with running_client(make_app(settings, published)) as client:
        r = submit(client)
        assert r.status_code == 429, r.text
        assert int(r.headers["Retry-After"]) > 0
        detail = r.json()["detail"]
        assert "tenant 'default' stores 1.5 MiB of its 1 MiB (TAS_MAX_STORED_MB_PER_TENANT)" in (
            detail
        ), detail
        assert jobs_in_db(client) == 0
        assert published.published == []


def test_deleting_a_job_makes_room_at_once(tmp_path: Path) -> None:
    settings = make_stored(tmp_path, 1)
    with running_client(make_app(settings)) as client:
        job_id = submit(client).json()["id"]
        assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
        d = job_store.job_dir(settings.resolved_artifact_dir, job_id, tenant="default")
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"\0" * 2 * 2**20)
        usage_store.forget_walk(d.parent)  # as if the worker's files had been there all along
        assert submit(client).status_code == 429
        assert client.delete(f"/jobs/{job_id}").status_code == 204
        assert not d.exists()
        assert submit(client).status_code == 201


def test_another_tenants_files_do_not_count(tmp_path: Path) -> None:
    settings = make_stored(tmp_path, 1)
    job_files(settings, "team-b", 2 * 2**20)
    with running_client(make_app(settings)) as client:
        assert submit(client).status_code == 201


def test_size_text() -> None:
    assert size_text(10 * 2**30 - 2**28) == "9.75 GiB"
    assert size_text(512 * 2**20) == "512 MiB"
    assert size_text(1536) == "1.5 KiB"
    assert size_text(12) == "12 B"


def test_event_streams_are_bounded_per_tenant_by_default(tmp_path: Path) -> None:
    """A quarter of the process-wide slots, so one tenant cannot hold them all; the refusal
    names the setting (tests/unit/app/api/test_job_events.py drives the refusal itself)."""
    defaults = Settings(data_dir=tmp_path)
    assert defaults.max_event_streams_per_tenant == defaults.max_event_streams // 4
    with running_client(make_app(migrated_settings(tmp_path))) as client:
        streams = client.app.state.job_streams  # type: ignore[attr-defined]
        assert streams.max_per_tenant == 64

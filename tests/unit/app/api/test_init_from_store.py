"""A submit whose `model.init_from` is checked against an artifact store that does not answer:
the same 503 with Retry-After the uploads and the serving paths give (the request was fine: try
again), never a 500 and never a 422 saying the weights are missing; nothing is queued."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from tas.settings import Settings
from tas.store.orm import Job, ModelVersion, WeightsFile
from tests.helpers.api import RecordingPublisher, make_app, migrated_settings, running_client
from tests.helpers.registry import Registry
from tests.helpers.s3 import unreachable_store_url
from tests.helpers.specs import iris_spec


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """An S3 endpoint where nothing listens (one attempt per request, so the test is quick)."""
    url = unreachable_store_url(monkeypatch.setenv)
    return migrated_settings(
        tmp_path / "api",
        artifact_url=url,
        local_cache_dir=tmp_path / "cache",
        max_stored_mb_per_tenant=None,  # its check lists the store first (tested on its own)
    )


def registered_model(tmp_path: Path, settings: Settings) -> None:
    """Model `m` version 1, registered by a worker with a remote store: its row names its
    bundle's key."""
    worker = Registry(
        Settings(data_dir=tmp_path / "worker", database_url=settings.resolved_database_url)
    )
    reg = worker.add("m", input_shape=(4,), out_dim=3)
    with worker.sessions() as s:
        s.execute(
            update(ModelVersion)
            .where(ModelVersion.job_id == reg.job_id)
            .values(model_dir=f"jobs/{reg.job_id}/model")
        )
        s.commit()


@pytest.mark.parametrize("ref", ["m", "m:1", "weights:" + "ab" * 8])
def test_an_unreachable_store_while_checking_init_from_is_a_503(
    tmp_path: Path, settings: Settings, ref: str
) -> None:
    registered_model(tmp_path, settings)
    published = RecordingPublisher()
    with running_client(make_app(settings, published)) as client:
        with client.app.state.sessions() as s:  # type: ignore[attr-defined]
            s.add(
                WeightsFile(tenant="default", sha256="ab" * 32, name="w", size_bytes=10, tensors={})
            )
            s.commit()
        r = client.post("/jobs", json=iris_spec(model={"init_from": ref}))
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"], r.headers
        detail = r.json()["detail"]
        assert "artifact store did not answer" in detail, detail
        assert f"'init_from {ref}'" in detail, detail
        assert "s3://" not in detail and "nowhere" not in detail  # the store's URL is logged only
        with client.app.state.sessions() as s:  # type: ignore[attr-defined]
            assert s.scalar(select(func.count()).select_from(Job).where(Job.name == "t")) == 0
        assert published.published == []
        # A source that is simply not there is still the 422 naming init_from.
        r = client.post("/jobs", json=iris_spec(model={"init_from": "nothing"}))
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "model", "init_from"]

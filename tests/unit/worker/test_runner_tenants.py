"""A job of a tenant other than `default` runs with its files under the tenant's prefix
(`<artifact_dir>/tenants/<tenant>/jobs/<id>`), and everything that reads them back finds them
there: the registered model, the per-sample predictions, the API's containment check."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.services.predictions import available_splits
from app.services.serving import contained_artifact
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store.orm import Job, ModelVersion
from tests.helpers.api import migrated_settings
from tests.helpers.specs import iris_spec
from worker.claim import run_job


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(tmp_path, device="cpu", heartbeat_seconds=0.2)


def test_a_tenants_job_writes_under_its_prefix(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s:
        job_id = job_store.create_job(s, iris_spec(), tenant="team-b", max_attempts=1).id
        s.commit()
    assert run_job(job_id, settings=settings, sessions=sessions, owner="t").status == "succeeded"

    root = settings.resolved_artifact_dir
    expected = root / "tenants" / "team-b" / "jobs" / job_id
    assert job_store.job_dir(root, job_id, tenant="team-b") == expected
    assert (expected / "model" / "model.safetensors").is_file()
    assert not (root / "jobs").exists() or not any((root / "jobs").iterdir())
    with sessions() as s:
        mv = s.scalars(select(ModelVersion).where(ModelVersion.job_id == job_id)).one()
        assert Path(mv.model_dir) == expected / "model"
        assert contained_artifact(settings, mv.model_dir) == expected / "model"
        job = s.get(Job, job_id)
        assert job is not None and available_splits(job, settings)

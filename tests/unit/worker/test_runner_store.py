"""The worker's runner with a remote artifact store (TAS_ARTIFACT_URL set; here a directory no
other process reads, standing in for a bucket): a run works in its own scratch under
TAS_CACHE_DIR, never in the artifact directory, keeps its checkpoints and model in the store,
records store keys (not the store's URL), and leaves no scratch behind; deleting the job deletes
its prefix in the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.services import jobs as job_service
from tas.core.objstore import latest_bundle, open_bundle, open_store
from tas.core.spec import JobSpec
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store.leases import Lease
from tas.store.migrate import upgrade
from tas.store.orm import Checkpoint, Job, ModelVersion
from worker.claim import run_job
from worker.reporter import DbReporter
from worker.runner import job_workdir, public_error, scratch_dir


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(
        data_dir=tmp_path / "var",
        device="cpu",
        heartbeat_seconds=0.2,
        artifact_url=str(tmp_path / "bucket"),
        local_cache_dir=tmp_path / "machine-a",
    )
    s.ensure_dirs()
    upgrade(s.resolved_database_url)
    return s


SPEC: dict[str, Any] = {
    "name": "iris-s3",
    "dataset": {"name": "iris", "val_fraction": 0.2},
    "model": {"arch": "mlp", "hidden": [16]},
    "training": {"epochs": 3, "batch_size": 8, "optimizer": "adam", "lr": 0.01, "seed": 3},
    "checkpoint": {"every_epochs": 1, "keep_last": 2},
}


def test_scratch_is_the_machines_own_with_a_remote_store(
    settings: Settings, tmp_path: Path
) -> None:
    work = job_workdir(settings, "j1", "acme", 3)
    assert (
        work
        == scratch_dir(settings, "j1", "acme", 3)
        == scratch_dir(settings, "j1", "acme") / "run-3"
    )
    assert work.is_relative_to(tmp_path / "machine-a")
    assert "tenants/acme/jobs/j1/run-3" in work.as_posix()
    local = Settings(data_dir=tmp_path / "var")
    assert job_workdir(local, "j1", "default", 3) == local.resolved_artifact_dir / "jobs" / "j1"


def test_a_job_keeps_its_checkpoints_and_model_in_the_store(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    with sessions() as s:
        job_id = job_service.submit(
            s, JobSpec.model_validate(SPEC), tenant="default", max_attempts=3, settings=settings
        ).id
        s.commit()
    # What a run killed on this machine left (run 0), and a file of it: gone once run 1 starts.
    left = scratch_dir(settings, job_id, "default", 0) / "predictions" / "val.npz"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"torn")
    run_job(job_id, settings=settings, sessions=sessions, owner="test/1/x")

    store = open_store(tmp_path / "bucket")
    key = job_store.job_key(job_id, tenant="default")
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "succeeded", job.error
        mv = s.scalar(select(ModelVersion).where(ModelVersion.job_id == job_id))
        assert mv is not None and mv.model_dir == f"{key}/model"
        assert open_bundle(store, mv.model_dir).names() == ["card.json", "model.safetensors"]
        rows = list(s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)))
        assert rows and all(r.path.startswith(f"{key}/checkpoints/ckpt-") for r in rows)
        kept = {r.path for r in rows if not r.deleted}
        register = next(st for st in job.stages if st.name == "register")
        assert (register.outputs or {})["path"] == f"{key}/model"
    newest = latest_bundle(store, f"{key}/checkpoints")
    assert newest is not None and newest.prefix in kept
    assert open_bundle(store, f"{key}/predictions").names() == ["val.npz"]
    # Nothing in the (local) artifact directory, and no scratch left on this machine.
    assert not job_store.job_dir(settings.resolved_artifact_dir, job_id, tenant="default").exists()
    assert not scratch_dir(settings, job_id, "default").exists()

    assert job_store.delete_stored(settings, job_id, tenant="default") > 0
    assert store.list_objects(key) == []


def test_a_local_artifact_directory_deletes_nothing_from_a_store(tmp_path: Path) -> None:
    local = Settings(data_dir=tmp_path / "var")
    assert job_store.delete_stored(local, "j1", tenant="default") == 0


def test_store_urls_become_keys_in_what_the_database_keeps() -> None:
    reporter = DbReporter(
        sessionmaker(),
        Lease("j", "test/1/x", 1),
        lease_seconds=10,
        interval=1,
        store_root="s3://bucket/tas/",
    )
    out = reporter.relative(
        {"resumed_from": {"path": "s3://bucket/tas/jobs/j/checkpoints/c", "epoch": 2}, "n": 1}
    )
    assert out == {"resumed_from": {"path": "jobs/j/checkpoints/c", "epoch": 2}, "n": 1}
    assert reporter.relative(["s3://bucket/tasx/y", "jobs/j"]) == ["s3://bucket/tasx/y", "jobs/j"]


def test_the_store_url_in_an_error_becomes_its_setting(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "var", artifact_url="s3://bucket/tas", local_cache_dir=tmp_path / "c"
    )
    error = {
        "message": "s3://bucket/tas/jobs/j1/model/g1/model.safetensors is missing; see"
        f" {tmp_path / 'c'}/scratch/jobs/j1"
    }
    out = public_error(error, settings)["message"]
    assert out == (
        "TAS_ARTIFACT_URL/jobs/j1/model/g1/model.safetensors is missing; see"
        " TAS_CACHE_DIR/scratch/jobs/j1"
    )

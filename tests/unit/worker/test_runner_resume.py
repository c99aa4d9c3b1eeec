"""A job stopped by its time limit, resumed with a larger one, in process (the worker's runner, no
broker): it fails with TimeLimitExceeded and a checkpoint, the resume keeps the checkpoint valid
(max_minutes is not part of what a checkpoint is bound to), and the run ends with the weights of
a run never stopped."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.services import jobs as job_service
from tas.core.spec import JobSpec
from tas.errors import InvalidInput
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store.orm import Job, JobStage
from worker.claim import run_job


def spec(name: str, max_minutes: float) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": {"name": "iris", "val_fraction": 0.2},
        "model": {"arch": "mlp", "hidden": [16]},
        "training": {
            "epochs": 4,
            "batch_size": 8,
            "optimizer": "adam",
            "lr": 0.01,
            "scheduler": "cosine",
            "seed": 3,
            "max_minutes": max_minutes,
        },
    }


def submit(sessions: sessionmaker[Session], settings: Settings, body: dict[str, Any]) -> str:
    with sessions() as s:
        job = job_service.submit(
            s, JobSpec.model_validate(body), tenant="default", max_attempts=3, settings=settings
        )
        s.commit()
        return job.id


def run(sessions: sessionmaker[Session], settings: Settings, job_id: str) -> Job:
    run_job(job_id, settings=settings, sessions=sessions, owner="test/1/x")
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def weights(settings: Settings, job_id: str) -> dict[str, torch.Tensor]:
    return load_file(
        str(
            job_store.job_dir(settings.resolved_artifact_dir, job_id, tenant="default")
            / "model/model.safetensors"
        )
    )


def test_a_time_limited_job_resumes_with_a_larger_limit_to_the_same_weights(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    ref = run(sessions, settings, submit(sessions, settings, spec("ref", 60)))
    assert ref.status == "succeeded", ref.error

    job_id = submit(sessions, settings, spec("limited", 1e-6))  # past its limit at once
    stopped = run(sessions, settings, job_id)
    assert stopped.status == "failed"
    assert stopped.error and stopped.error["type"] == "TimeLimitExceeded", stopped.error
    checkpoints = list(
        (
            job_store.job_dir(settings.resolved_artifact_dir, job_id, tenant="default")
            / "checkpoints"
        ).rglob("*")
    )
    assert checkpoints  # the limit saves one before failing the job

    with sessions() as s:
        job = job_store.get_job(s, job_id, tenant=None)
        with pytest.raises(InvalidInput, match="larger one"):
            job_service.resume(s, job, max_minutes=None, settings=settings)
        job_service.resume(s, job, max_minutes=60, settings=settings)
        s.commit()
    done = run(sessions, settings, job_id)
    assert done.status == "succeeded", done.error
    assert done.spec["training"]["max_minutes"] == 60
    with sessions() as s:
        train = s.scalars(
            select(JobStage).where(
                JobStage.job_id == job_id, JobStage.name == "train", JobStage.status == "succeeded"
            )
        ).one()
        assert (train.outputs or {}).get("resumed_from"), train.outputs  # not a fresh start
    a, b = weights(settings, ref.id), weights(settings, job_id)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

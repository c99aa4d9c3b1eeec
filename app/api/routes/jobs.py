from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status
from sqlalchemy import select

from app.api.deps import JobDep, PublisherDep, SessionDep, SettingsDep, TenantDep
from app.schemas.jobs import CheckpointOut, JobOut, JobPage, MetricRowOut
from app.services import jobs as job_service
from core.spec import JobSpec
from tas import jobstore
from tas.db.models import Checkpoint, Job, MetricRow

router = APIRouter(prefix="/jobs", tags=["jobs"])

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobOut)
def create_job(
    spec: JobSpec,
    session: SessionDep,
    publisher: PublisherDep,
    settings: SettingsDep,
    tenant: TenantDep,
    response: Response,
) -> Job:
    """Validate a job spec and queue it. Published only after the row is committed: a crash in
    between leaves a queued job that the reaper publishes again, never a message with no job."""
    job = job_service.submit(
        session, spec, tenant=tenant, max_attempts=settings.max_attempts, settings=settings
    )
    session.commit()
    publisher.publish(job.id, job.queue)
    response.headers["Location"] = f"/jobs/{job.id}"
    return job


@router.get("", response_model=JobPage)
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    status: Annotated[Status | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> jobstore.Page:
    return jobstore.list_jobs(session, tenant=tenant, status=status, limit=limit, cursor=cursor)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job: JobDep) -> Job:
    return job


@router.get("/{job_id}/metrics", response_model=list[MetricRowOut])
def get_metrics(
    job: JobDep,
    session: SessionDep,
    kind: Annotated[Literal["epoch", "step", "all"], Query()] = "epoch",
) -> list[dict[str, object]]:
    """A row per epoch (default), per logged step, or both, in training order."""
    q = select(MetricRow).where(MetricRow.job_id == job.id)
    if kind == "epoch":
        q = q.where(MetricRow.step == -1)
    elif kind == "step":
        q = q.where(MetricRow.step >= 0)
    rows = session.scalars(q.order_by(MetricRow.epoch, MetricRow.step))
    return [{**r.values, "epoch": r.epoch, "step": None if r.step < 0 else r.step} for r in rows]


@router.get("/{job_id}/checkpoints", response_model=list[CheckpointOut])
def get_checkpoints(job: JobDep, session: SessionDep) -> list[Checkpoint]:
    q = select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.deleted.is_(False))
    return list(session.scalars(q.order_by(Checkpoint.epoch, Checkpoint.step)))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job: JobDep, session: SessionDep) -> Job:
    """A queued job is cancelled at once; a running one stops at its next step (409 once finished)."""
    jobstore.request_cancel(session, job)
    session.commit()
    return job


"""Job state transitions, shared by the API and the worker.

The database is the source of truth: the broker may deliver a job twice or lose it. Every write a
worker makes is fenced by (lease_owner, attempts), so a worker whose lease expired and was taken
over can no longer change the job. Nothing here commits: the caller's boundary (a request, a task's
flush) does."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, and_, delete, func, or_, select, tuple_, update
from sqlalchemy.orm import Session

from core.spec import tag_count_problem
from tas.db.models import (
    FINISHED,
    Checkpoint,
    Job,
    JobStage,
    JobStatus,
    MetricRow,
    ModelAlias,
    ModelVersion,
    utcnow,
)
from tas.errors import (
    AliasNotFound,
    InvalidInput,
    JobFinished,
    JobHasModel,
    JobNotFinished,
    JobNotFound,
    JobNotResumable,
    ModelNotFound,
    ModelNotReady,
    ModelVersionNotFound,
)


def rowcount(result: Any) -> int:
    """Rows an UPDATE/DELETE matched (`Session.execute` is typed as returning a plain Result)."""
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def queue_for(device: str) -> str:
    """Jobs that ask for a GPU go to workers that have one; `auto` runs anywhere."""
    return {"cuda": "gpu", "cpu": "cpu"}.get(device, "default")


def create_job(session: Session, spec: dict[str, Any], *, tenant: str, max_attempts: int) -> Job:
    job = Job(
        tenant=tenant,
        name=spec["name"],
        spec=spec,
        queue=queue_for(spec.get("resources", {}).get("device", "auto")),
        max_attempts=max_attempts,
    )
    session.add(job)
    session.flush()
    return job


def job_dir(artifact_dir: Path, job_id: str) -> Path:
    """A job's checkpoints and model (`settings.resolved_artifact_dir` is the root)."""
    return artifact_dir / "jobs" / job_id


def get_job(session: Session, job_id: str, *, tenant: str | None = None) -> Job:
    job = session.get(Job, job_id)
    if job is None or (tenant is not None and job.tenant != tenant):
        raise JobNotFound(job_id)
    return job


@dataclass
class Page:
    items: list[Job]
    next_cursor: str | None


def encode_cursor(created_at: datetime, row_id: str) -> str:
    """A page cursor for lists ordered by (created_at, id) descending (jobs, datasets)."""
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, row_id = raw.split("|", 1)
        return datetime.fromisoformat(created), row_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            [(("query", "cursor"), "not a cursor this server issued; pass next_cursor back as is")]
        ) from exc


@dataclass(frozen=True)
class JobFilter:
    """What `GET /jobs` narrows to; every part is applied in SQL, so paging stays exact."""

    name_prefix: str | None = None
    statuses: Sequence[str] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    #: (key, value) pairs that must all be among the job's tags.
    tags: Sequence[tuple[str, str]] = ()


def _filtered(q: Any, f: JobFilter) -> Any:
    if f.name_prefix:
        # substr rather than LIKE: SQLite's LIKE ignores case and PostgreSQL's does not, and a
        # name may hold `_`, LIKE's wildcard.
        q = q.where(func.substr(Job.name, 1, len(f.name_prefix)) == f.name_prefix)
    if f.statuses:
        q = q.where(Job.status.in_(list(f.statuses)))
    if f.created_after is not None:
        q = q.where(Job.created_at >= f.created_after)
    if f.created_before is not None:
        q = q.where(Job.created_at < f.created_before)
    for key, value in f.tags:
        # JSON_EXTRACT on SQLite, ->> on PostgreSQL: the same expression on both stacks.
        q = q.where(Job.tags[key].as_string() == value)
    return q


def list_jobs(
    session: Session,
    *,
    tenant: str,
    limit: int,
    cursor: str | None,
    filters: JobFilter | None = None,
) -> Page:
    """Newest first; the cursor is (created_at, id) of the last item, so pages never skip or repeat."""
    q = _filtered(select(Job).where(Job.tenant == tenant), filters or JobFilter())
    if cursor is not None:
        created, job_id = decode_cursor(cursor)
        q = q.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
    rows = list(session.scalars(q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    items = rows[:limit]
    return Page(
        items, encode_cursor(items[-1].created_at, items[-1].id) if more and items else None
    )


def request_cancel(session: Session, job: Job) -> Job:
    """A queued job is cancelled at once; a running one is flagged and stops at its next step."""
    now = utcnow()
    done = rowcount(
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.queued.value)
            .values(
                status=JobStatus.cancelled.value,
                cancel_requested=True,
                finished_at=now,
                updated_at=now,
            )
        )
    )
    if done:  # a preempted or requeued run's stages are already ended; this keeps it so
        _close_stages(session, job.id, "cancelled", now)
    else:
        done = rowcount(
            session.execute(
                update(Job)
                .where(Job.id == job.id, Job.status == JobStatus.running.value)
                .values(cancel_requested=True, updated_at=now)
            )
        )
    session.refresh(job)
    if not done:
        raise JobFinished(job.id, job.status)
    return job


RESUMABLE = (JobStatus.failed.value, JobStatus.cancelled.value)


def resume_job(session: Session, job: Job, *, spec: dict[str, Any] | None = None) -> Job:
    """A failed or cancelled job back to `queued` with a fresh attempt budget. Its checkpoints,
    metrics, claims, preemptions and attempt log stay: the next run starts from the last good
    checkpoint in its directory, and the history says what happened before. `spec` replaces the
    stored one (the caller allows only fields a checkpoint does not depend on). Conditional, so
    two resumes racing queue the job once; the caller commits, then publishes."""
    now = utcnow()
    values: dict[str, Any] = {
        "status": JobStatus.queued.value,
        "stage": None,
        "attempts": 0,
        "error": None,
        "cancel_requested": False,
        "finished_at": None,
        "lease_owner": None,
        "lease_until": None,
        "queued_at": now,
        "republishes": 0,
        "updated_at": now,
    }
    if spec is not None:
        values["spec"] = spec
    done = rowcount(
        session.execute(
            update(Job).where(Job.id == job.id, Job.status.in_(RESUMABLE)).values(**values)
        )
    )
    session.refresh(job)
    if not done:
        raise JobNotResumable(job.id, job.status)
    return job


def set_tags(session: Session, job: Job, changes: dict[str, str | None]) -> Job:
    """Merge tag changes (a None value removes the key). The row is locked for the merge so two
    PATCHes at once both land (PostgreSQL; SQLite serialises writers itself)."""
    locked = session.scalars(
        select(Job)
        .where(Job.id == job.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    merged = dict(locked.tags or {})
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    problem = tag_count_problem(merged)
    if problem:
        raise InvalidInput([(("body", "tags"), problem)])
    locked.tags = merged
    locked.updated_at = utcnow()
    session.flush()
    return locked


def delete_job(session: Session, job: Job) -> None:
    """Drop a finished job's rows (stages, metrics and checkpoints go with it). Refused while it
    can still run, or while a registered model version is served from its directory. The caller
    commits, then removes the job's directory."""
    if job.status not in FINISHED:
        raise JobNotFinished(job.id, job.status)
    mv = session.scalar(select(ModelVersion).where(ModelVersion.job_id == job.id))
    if mv is not None:
        raise JobHasModel(job.id, mv.name, mv.version)
    # The children explicitly, not only by ON DELETE CASCADE: a SQLite connection opened
    # without foreign_keys=ON would otherwise leave them behind.
    for child in (MetricRow, Checkpoint, JobStage):
        session.execute(delete(child).where(child.job_id == job.id))
    done = rowcount(session.execute(delete(Job).where(Job.id == job.id, Job.status.in_(FINISHED))))
    if not done:  # resumed between the read and the delete
        session.refresh(job)
        raise JobNotFinished(job.id, job.status)
    session.expunge(job)


# ---------------------------------------------------------------------------------------------
# Worker side: claim, heartbeat, report, settle. Every write is fenced by (owner, run number).
#
# `claims` goes up by one on every claim and is the run's number: the fencing token of its lease
# and the key of its stages. `attempts` counts the runs that count against `max_attempts`: a claim
# counts one, and a run handed back because its worker was stopping (a preemption) gives it back
# in the same UPDATE that counts it in `preemptions`. `attempt_log` holds one entry per run saying
# how it ended, so a job that runs out of attempts can say what happened to each of them.

#: How each kind of run ending leaves the stages the run had open.
OPEN_STAGE_ENDS = {
    "succeeded": "interrupted",
    "failed": "failed",
    "cancelled": "cancelled",
    "preempted": "preempted",
    "killed": "interrupted",
    "lease_expired": "interrupted",
}


@dataclass(frozen=True)
class Lease:
    job_id: str
    owner: str
    #: The run number: the job's `claims` as this run claimed it (its fencing token).
    attempt: int


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _close_run(
    log: list[Any] | None,
    outcome: str,
    now: datetime,
    *,
    stage: str | None = None,
    detail: str | None = None,
    **extra: Any,
) -> list[Any]:
    """The attempt log with its open entry (the last run, if still running) ended as `outcome`.
    A new list: the JSON column is written whole, inside the caller's fenced UPDATE."""
    entries = [dict(e) for e in (log or [])]
    if entries and entries[-1].get("outcome") == "running":
        entries[-1].update(outcome=outcome, ended_at=_iso(now), stage=stage, detail=detail, **extra)
    return entries


def _close_stages(
    session: Session, job_id: str, outcome: str, now: datetime, *, run: int | None = None
) -> None:
    """No stage stays `running` once its run has ended: the one it was in takes the run's end."""
    q = update(JobStage).where(JobStage.job_id == job_id, JobStage.status == "running")
    if run is not None:
        q = q.where(JobStage.attempt == run)
    session.execute(q.values(status=OPEN_STAGE_ENDS[outcome], finished_at=now))


def describe_run(entry: dict[str, Any]) -> str:
    """One run of the attempt log in words, e.g. `run 2: killed by signal 9 (SIGKILL) in train`."""
    outcome = entry.get("outcome")
    words = {
        "lease_expired": "lease expired",
        "preempted": "preempted (not counted)",
    }.get(str(outcome), str(outcome))
    detail = entry.get("detail")
    text = f"run {entry.get('run')}: {words}"
    if outcome == "killed" and detail:  # "by signal 9 (SIGKILL)", "with exit code 1"
        text += f" {detail}"
    if entry.get("stage"):
        text += f" in {entry['stage']}"
    if outcome != "killed" and detail:
        text += f" ({detail})"
    return text


def exhausted_error(job: Job, log: list[Any]) -> dict[str, Any]:
    """`MaxAttemptsExceeded`: what happened to each run, read from the attempt log."""
    runs = "; ".join(describe_run(e) for e in log if e.get("outcome") != "preempted")
    preempted = sum(1 for e in log if e.get("outcome") == "preempted")
    extra = (
        f" (and {preempted} preemption{'s' * (preempted != 1)}, not counted)" if preempted else ""
    )
    return {
        "type": "MaxAttemptsExceeded",
        "message": f"the job's {job.attempts} attempts (max_attempts {job.max_attempts}) all ended"
        f" without finishing{extra}: {runs or 'no run recorded'}",
        "hint": "each run's owner and times are in the job's attempt_log; the worker's log around"
        " them says more. POST /jobs/{id}/resume runs it again from its last checkpoint",
        "stage": job.stage,
    }


def claim(session: Session, job_id: str, owner: str, lease_seconds: float) -> Lease | None:
    """Take the job if it is queued, or running under an expired lease (its worker died).

    One conditional UPDATE keyed on the `claims` just read: two deliveries racing for the same
    job cannot both win, and the attempt log written with it cannot lose an entry."""
    now = utcnow()
    row = session.execute(
        select(Job.claims, Job.attempt_log, Job.stage, Job.lease_owner).where(Job.id == job_id)
    ).first()
    if row is None:
        return None
    claims, log, stage, old_owner = row
    run = claims + 1
    # An entry still open belongs to a run whose lease ran out (a queued job's runs are closed).
    log = _close_run(
        log, "lease_expired", now, stage=stage, detail=f"no heartbeat from {old_owner}"
    )
    log.append(
        {
            "run": run,
            "owner": owner,
            "started_at": _iso(now),
            "ended_at": None,
            "outcome": "running",
            "detail": None,
            "stage": None,
        }
    )
    claimable = or_(
        Job.status == JobStatus.queued.value,
        and_(Job.status == JobStatus.running.value, Job.lease_until < now),
    )
    res = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.claims == claims,
            claimable,
            Job.cancel_requested.is_(False),
            Job.attempts < Job.max_attempts,
        )
        .values(
            status=JobStatus.running.value,
            lease_owner=owner,
            lease_until=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            claims=run,
            attempt_log=log,
            started_at=func.coalesce(Job.started_at, now),
            updated_at=now,
        )
    )
    if rowcount(res) != 1:
        return None
    # What an earlier run left open was cut short by its worker's death.
    session.execute(
        update(JobStage)
        .where(JobStage.job_id == job_id, JobStage.attempt < run, JobStage.status == "running")
        .values(status="interrupted", finished_at=now)
    )
    return Lease(job_id, owner, run)


def _fenced(lease: Lease) -> Any:
    return and_(
        Job.id == lease.job_id,
        Job.lease_owner == lease.owner,
        Job.claims == lease.attempt,
        Job.status == JobStatus.running.value,
    )


@dataclass(frozen=True)
class Beat:
    cancel_requested: bool


def renew(
    session: Session, lease: Lease, lease_seconds: float, changes: dict[str, Any] | None = None
) -> Beat | None:
    """Extend the lease (and write the latest progress). None: the lease is lost, stop at once."""
    now = utcnow()
    values: dict[str, Any] = {
        "lease_until": now + timedelta(seconds=lease_seconds),
        "heartbeat_at": now,
        "updated_at": now,
        **(changes or {}),
    }
    row = session.execute(
        update(Job).where(_fenced(lease)).values(**values).returning(Job.cancel_requested)
    ).first()
    return None if row is None else Beat(bool(row[0]))


def start_stage(session: Session, lease: Lease, name: str) -> None:
    session.execute(
        delete(JobStage).where(
            JobStage.job_id == lease.job_id,
            JobStage.attempt == lease.attempt,
            JobStage.name == name,
        )
    )
    session.add(JobStage(job_id=lease.job_id, attempt=lease.attempt, name=name))


def finish_stage(
    session: Session, lease: Lease, name: str, outputs: dict[str, Any], status: str = "succeeded"
) -> None:
    session.execute(
        update(JobStage)
        .where(
            JobStage.job_id == lease.job_id,
            JobStage.attempt == lease.attempt,
            JobStage.name == name,
        )
        .values(status=status, finished_at=utcnow(), outputs=outputs)
    )


def upsert_metrics(session: Session, job_id: str, rows: Sequence[dict[str, Any]]) -> None:
    """Replace rows with the same (epoch, step): a resumed attempt replays, never duplicates."""
    if not rows:
        return
    keys = list({(int(r["epoch"]), int(r.get("step", -1))) for r in rows})
    session.execute(
        delete(MetricRow).where(
            MetricRow.job_id == job_id, tuple_(MetricRow.epoch, MetricRow.step).in_(keys)
        )
    )
    session.add_all(
        MetricRow(
            job_id=job_id,
            epoch=int(r["epoch"]),
            step=int(r.get("step", -1)),
            values={k: v for k, v in r.items() if k not in ("epoch", "step")},
        )
        for r in rows
    )


def record_checkpoint(
    session: Session, lease: Lease, record: dict[str, Any], kept_paths: Sequence[str]
) -> None:
    if record.get("is_best"):
        session.execute(
            update(Checkpoint).where(Checkpoint.job_id == lease.job_id).values(is_best=False)
        )
    session.execute(
        delete(Checkpoint).where(
            Checkpoint.job_id == lease.job_id, Checkpoint.path == record["path"]
        )
    )
    session.add(Checkpoint(job_id=lease.job_id, attempt=lease.attempt, **record))
    session.flush()
    session.execute(
        update(Checkpoint)
        .where(Checkpoint.job_id == lease.job_id, Checkpoint.path.not_in(list(kept_paths)))
        .values(deleted=True)
    )


def _end_run(
    session: Session,
    lease: Lease,
    outcome: str,
    values: dict[str, Any],
    *,
    detail: str | None = None,
) -> bool:
    """Write the run's end, its attempt-log entry and its stages, only while this lease still
    owns the job. False: another run does (or the job was settled without it); nothing written."""
    now = utcnow()
    row = session.execute(select(Job.attempt_log, Job.stage).where(_fenced(lease))).first()
    if row is None:
        return False
    log, stage = row
    done = rowcount(
        session.execute(
            update(Job)
            .where(_fenced(lease))
            .values(
                updated_at=now,
                attempt_log=_close_run(log, outcome, now, stage=stage, detail=detail),
                **values,
            )
        )
    )
    if done:
        _close_stages(session, lease.job_id, outcome, now, run=lease.attempt)
    return bool(done)


def finish(session: Session, lease: Lease, status: JobStatus, **values: Any) -> bool:
    """Settle the job as succeeded, failed or cancelled (a failure's `error` names what it raised
    in the attempt log too)."""
    error = values.get("error") or {}
    detail = f"raised {error.get('type')}: {error.get('message')}" if error else None
    return _end_run(
        session,
        lease,
        status.value,
        {"status": status.value, "finished_at": utcnow(), "lease_until": None, **values},
        detail=detail,
    )


def release(session: Session, lease: Lease, *, detail: str | None = None, **values: Any) -> bool:
    """Hand a running job back to the queue (its worker is stopping): it resumes from its
    checkpoint. A preemption, not a failure: the attempt it took is given back."""
    return _end_run(
        session,
        lease,
        "preempted",
        {
            "status": JobStatus.queued.value,
            "lease_owner": None,
            "lease_until": None,
            "queued_at": utcnow(),
            "republishes": 0,
            "attempts": Job.attempts - 1,
            "preemptions": Job.preemptions + 1,
            **values,
        },
        detail=detail or "its worker was stopped; it resumes from its last checkpoint",
    )


def _settle_dead_run(session: Session, job: Job, outcome: str, now: datetime, **extra: Any) -> bool:
    """A run whose worker is gone (its pool child killed, or its lease expired): end its log
    entry and stages, and put the job back in the queue, or settle it when it can never run
    again (cancel requested, attempts used up). Conditional on the run read in `job`."""
    log = _close_run(job.attempt_log, outcome, now, stage=job.stage, **extra)
    values: dict[str, Any] = {"attempt_log": log, "lease_owner": None, "lease_until": None}
    if job.cancel_requested:
        values.update(status=JobStatus.cancelled.value, finished_at=now)
        stages = "cancelled"
    elif job.attempts >= job.max_attempts:
        values.update(
            status=JobStatus.failed.value, finished_at=now, error=exhausted_error(job, log)
        )
        stages = outcome
    else:
        values.update(status=JobStatus.queued.value, queued_at=now, republishes=0)
        stages = outcome
    done = rowcount(
        session.execute(
            update(Job)
            .where(
                Job.id == job.id,
                Job.claims == job.claims,
                Job.status == job.status,
                Job.lease_owner.is_not_distinct_from(job.lease_owner),
            )
            .values(updated_at=now, **values)
        )
    )
    if done:
        _close_stages(session, job.id, stages, now)
    return bool(done)


def settle_killed(
    session: Session, job_id: str, owner_prefix: str, *, signal: int | None, detail: str
) -> str | None:
    """The worker's main process saw the pool child running this job die (a signal, an exit):
    the run ends as `killed` now instead of when its lease runs out. Only if the job is still
    running under an owner named `owner_prefix…` (that child). Returns the job's new status."""
    job = session.get(Job, job_id, populate_existing=True)
    if (
        job is None
        or job.status != JobStatus.running.value
        or not (job.lease_owner or "").startswith(owner_prefix)
    ):
        return None
    now = utcnow()
    if not _settle_dead_run(session, job, "killed", now, detail=detail, signal=signal):
        return None
    session.refresh(job)
    return job.status


def settle_expired(session: Session, job_id: str) -> str | None:
    """A running job whose lease ran out (its worker stopped renewing it, found by the reaper):
    its run ends as `lease_expired`, and the job goes back to the queue or is settled. Returns
    the job's new status, None when it was not expired (or changed meanwhile)."""
    job = session.get(Job, job_id, populate_existing=True)
    now = utcnow()
    if (
        job is None
        or job.status != JobStatus.running.value
        or job.lease_until is None
        or job.lease_until >= now
    ):
        return None
    if not _settle_dead_run(
        session, job, "lease_expired", now, detail=f"no heartbeat from {job.lease_owner}"
    ):
        return None
    session.refresh(job)
    return job.status


def fail_unclaimable(session: Session, job_id: str) -> Job | None:
    """A delivery that could not claim: settle jobs that can never run again (attempts used up,
    cancelled while its worker was gone). Returns the job when it changed it."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.status in FINISHED:
        return None
    now = utcnow()
    if job.status == JobStatus.running.value:
        if job.lease_until is not None and job.lease_until >= now:
            return None  # running under a live lease
        if not (job.cancel_requested or job.attempts >= job.max_attempts):
            return None  # claimable: the next claim takes it over
        status = settle_expired(session, job_id)
        return job if status in FINISHED else None
    if not (job.cancel_requested or job.attempts >= job.max_attempts):
        return None
    log = job.attempt_log or []
    values: dict[str, Any] = {"finished_at": now, "updated_at": now}
    if job.cancel_requested:
        values["status"] = JobStatus.cancelled.value
    else:
        values.update(status=JobStatus.failed.value, error=exhausted_error(job, log))
    done = rowcount(
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued.value, Job.claims == job.claims)
            .values(**values)
        )
    )
    if not done:
        return None
    _close_stages(session, job_id, "cancelled" if job.cancel_requested else "failed", now)
    session.refresh(job)
    return job


def register_model(
    session: Session, job: Job, model_dir: str, card: dict[str, Any], metrics: dict[str, Any] | None
) -> ModelVersion:
    existing = session.scalar(select(ModelVersion).where(ModelVersion.job_id == job.id))
    if existing is not None:
        return existing
    name = job.spec.get("model_name") or job.name
    last = session.scalar(
        select(func.max(ModelVersion.version)).where(
            ModelVersion.tenant == job.tenant, ModelVersion.name == name
        )
    )
    mv = ModelVersion(
        tenant=job.tenant,
        name=name,
        version=(last or 0) + 1,
        job_id=job.id,
        model_dir=model_dir,
        card=card,
        metrics=metrics,
    )
    session.add(mv)
    session.flush()
    return mv


# The model registry: versions and aliases (`name@alias` → a version). Moving an alias is the
# deploy step; callers commit, then tell the serving cache (it re-resolves and warms the model).


def model_versions(session: Session, name: str, *, tenant: str) -> list[ModelVersion]:
    """A model's versions, newest first; ModelNotFound when it has none."""
    versions = list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.tenant == tenant, ModelVersion.name == name)
            .order_by(ModelVersion.version.desc())
        )
    )
    if not versions:
        raise ModelNotFound(name)
    return versions


def model_aliases(session: Session, *, tenant: str, name: str | None = None) -> list[ModelAlias]:
    q = select(ModelAlias).where(ModelAlias.tenant == tenant)
    if name is not None:
        q = q.where(ModelAlias.name == name)
    return list(session.scalars(q.order_by(ModelAlias.name, ModelAlias.alias)))


def get_version(session: Session, name: str, version: int, *, tenant: str) -> ModelVersion:
    mv = session.scalar(
        select(ModelVersion).where(
            ModelVersion.tenant == tenant,
            ModelVersion.name == name,
            ModelVersion.version == version,
        )
    )
    if mv is None:
        model_versions(session, name, tenant=tenant)  # an unknown model says so, not its version
        raise ModelVersionNotFound(name, version)
    return mv


def set_alias(
    session: Session, name: str, alias: str, version: int, *, tenant: str
) -> tuple[ModelAlias, ModelVersion]:
    """Point `name@alias` at `version` (created or moved); the version must exist."""
    mv = get_version(session, name, version, tenant=tenant)
    row = session.scalar(
        select(ModelAlias).where(
            ModelAlias.tenant == tenant, ModelAlias.name == name, ModelAlias.alias == alias
        )
    )
    if row is None:
        row = ModelAlias(tenant=tenant, name=name, alias=alias, version=version)
        session.add(row)
    else:
        row.version = version
        row.updated_at = utcnow()
    session.flush()
    return row, mv


def delete_alias(session: Session, name: str, alias: str, *, tenant: str) -> None:
    result = session.execute(
        delete(ModelAlias).where(
            ModelAlias.tenant == tenant, ModelAlias.name == name, ModelAlias.alias == alias
        )
    )
    if rowcount(result) == 0:
        raise AliasNotFound(name, alias)


def delete_version(session: Session, name: str, version: int, *, tenant: str) -> ModelVersion:
    """Drop a version and the aliases that point at it. The artifact stays with its job (the
    job's record still names it); the caller evicts it from the serving cache."""
    mv = get_version(session, name, version, tenant=tenant)
    session.execute(
        delete(ModelAlias).where(
            ModelAlias.tenant == tenant, ModelAlias.name == name, ModelAlias.version == version
        )
    )
    session.delete(mv)
    session.flush()
    return mv


JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve_model(session: Session, ref: str, *, tenant: str) -> ModelVersion:
    """A job id, `name` (latest version), `name:version` or `name@alias`: how /predict and
    `model.init_from` name a model. ModelNotFound, or ModelNotReady for an unfinished job."""
    if JOB_ID.match(ref):
        job = session.get(Job, ref)
        if job is None or job.tenant != tenant:
            raise ModelNotFound(ref)
        if job.status != JobStatus.succeeded.value:
            raise ModelNotReady(ref, job.status)
        mv = session.scalar(select(ModelVersion).where(ModelVersion.job_id == ref))
        if mv is None:
            raise ModelNotFound(ref)
        return mv
    if "@" in ref:
        name, _, alias = ref.partition("@")
        version_no = session.scalar(
            select(ModelAlias.version).where(
                ModelAlias.tenant == tenant, ModelAlias.name == name, ModelAlias.alias == alias
            )
        )
        if version_no is None:
            raise ModelNotFound(ref)
        version = str(version_no)
    else:
        name, _, version = ref.partition(":")
    q = select(ModelVersion).where(ModelVersion.tenant == tenant, ModelVersion.name == name)
    if version:
        if not version.isdigit():
            raise ModelNotFound(ref)
        q = q.where(ModelVersion.version == int(version))
    mv = session.scalar(q.order_by(ModelVersion.version.desc()).limit(1))
    if mv is None:
        raise ModelNotFound(ref)
    return mv

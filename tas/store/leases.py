"""The worker side of a job: claim, heartbeat, report, settle.

Every write a worker makes is fenced by (lease_owner, run number), so a worker whose lease expired
and was taken over can no longer change the job. Nothing here commits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, tuple_, update
from sqlalchemy.orm import Session

from tas.store import logs as log_store
from tas.store import metric_rollup
from tas.store.engine import rowcount
from tas.store.orm import (
    FINISHED,
    Checkpoint,
    Job,
    JobStage,
    JobStatus,
    MetricRow,
    utcnow,
)

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


def close_stages(
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
    written = [k for k in keys if k[1] >= 0]
    if written:  # the step rows' rollup, in the same transaction
        metric_rollup.after_write(session, job_id, min(written))


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
        close_stages(session, lease.job_id, outcome, now, run=lease.attempt)
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


def _settle_dead_run(
    session: Session,
    job: Job,
    outcome: str,
    now: datetime,
    limits: log_store.LogLimits | None = None,
    **extra: Any,
) -> bool:
    """A run whose worker is gone (its pool child killed, or its lease expired): end its log
    entry and stages, and put the job back in the queue, or settle it when it can never run
    again (cancel requested, attempts used up). Conditional on the run read in `job`. The job's
    log says so: the run's own lines stop where it died."""
    owner, run = job.lease_owner, job.claims  # read before the UPDATE syncs `job`
    log = _close_run(job.attempt_log, outcome, now, stage=job.stage, **extra)
    values: dict[str, Any] = {"attempt_log": log, "lease_owner": None, "lease_until": None}
    if job.cancel_requested:
        values.update(status=JobStatus.cancelled.value, finished_at=now)
        stages, then = "cancelled", "the job is cancelled"
    elif job.attempts >= job.max_attempts:
        values.update(
            status=JobStatus.failed.value, finished_at=now, error=exhausted_error(job, log)
        )
        stages, then = outcome, f"the job failed: its {job.attempts} attempts are used up"
    else:
        values.update(status=JobStatus.queued.value, queued_at=now, republishes=0)
        stages, then = outcome, "the job is queued again"
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
        close_stages(session, job.id, stages, now)
        lim = limits or log_store.LogLimits()
        line = log_store.LogLine(
            f"{describe_run(log[-1]) if log else 'the run'}; {then}",
            "error",
            "reaper" if outcome == "lease_expired" else "worker",
            run,
            owner,
        )
        log_store.append_logs(
            session, job.id, [line], max_lines=lim.max_lines, max_line_bytes=lim.max_line_bytes
        )
    return bool(done)


def settle_killed(
    session: Session,
    job_id: str,
    owner_prefix: str,
    *,
    signal: int | None,
    detail: str,
    limits: log_store.LogLimits | None = None,
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
    if not _settle_dead_run(session, job, "killed", now, limits, detail=detail, signal=signal):
        return None
    session.refresh(job)
    return job.status


def settle_expired(
    session: Session, job_id: str, limits: log_store.LogLimits | None = None
) -> str | None:
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
        session, job, "lease_expired", now, limits, detail=f"no heartbeat from {job.lease_owner}"
    ):
        return None
    session.refresh(job)
    return job.status


def fail_unclaimable(
    session: Session, job_id: str, limits: log_store.LogLimits | None = None
) -> Job | None:
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
        status = settle_expired(session, job_id, limits)
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
    close_stages(session, job_id, "cancelled" if job.cancel_requested else "failed", now)
    session.refresh(job)
    return job

"""Jobs as the API sees them: create, read, list, cancel, resume, tag, delete; a job's metrics and
checkpoints; the counts /metrics reports.

The database is the source of truth: the broker may deliver a job twice or lose it. Nothing here
commits: the caller's unit of work (a request, a task) does."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Connection,
    Float,
    Select,
    bindparam,
    case,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, joinedload, selectinload
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from tas.core.spec import tag_count_problem
from tas.errors import (
    InvalidInput,
    JobFinished,
    JobHasModel,
    JobNotFinished,
    JobNotFound,
    JobNotResumable,
)
from tas.settings import Settings
from tas.store import files as file_store
from tas.store import leases as lease_store
from tas.store import metric_series, pagination
from tas.store.artifacts import open_artifacts
from tas.store.engine import rowcount
from tas.store.orm import (
    FINISHED,
    Checkpoint,
    Job,
    JobLog,
    JobStage,
    JobStatus,
    MetricBlock,
    MetricRow,
    ModelVersion,
    utcnow,
)

log = logging.getLogger(__name__)


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


def jobs_root(artifact_dir: Path, tenant: str) -> Path:
    """The directory of the tenant's job directories: `<artifact_dir>/tenants/<tenant>/jobs`, or
    `<artifact_dir>/jobs` for the tenant `default` (the layout from before there were tenants,
    which its jobs keep: a job's directory is found from its id, never from a stored path)."""
    return file_store.tenant_root(artifact_dir, tenant) / "jobs"


def job_dir(artifact_dir: Path, job_id: str, *, tenant: str) -> Path:
    """A job's checkpoints, model and predictions (`settings.resolved_artifact_dir` is the
    root), under its tenant's prefix."""
    return jobs_root(artifact_dir, tenant) / job_id


def job_key(job_id: str, *, tenant: str) -> str:
    """A job's prefix in the artifact store: its directory's path below the artifact directory
    (`jobs/<id>`, or `tenants/<tenant>/jobs/<id>`), so a local store keeps today's layout."""
    return f"{file_store.tenant_prefix(tenant)}jobs/{job_id}"


def delete_stored(settings: Settings, job_id: str, *, tenant: str) -> int:
    """Delete a job's objects from a remote artifact store (checkpoints, model, predictions: all
    under its key), once nothing in the database points at them; returns how many. Nothing to do
    with a local artifact directory: the job's directory is those files, removed by the caller.
    Best effort: a store that fails is logged, never a failed request (the rows are gone, and a
    leftover prefix is only space)."""
    if not settings.remote_artifacts:
        return 0
    artifacts = open_artifacts(settings)
    key = job_key(job_id, tenant=tenant)
    try:
        return artifacts.store.delete_prefix(key)
    except Exception:
        log.exception("could not delete %s", artifacts.store.describe(key))
        return 0


def find_job(session: Session, job_id: str, *, tenant: str | None) -> Job | None:
    """The job, filtered by its tenant in the statement itself: another tenant's is not found,
    exactly as one that does not exist, and never read. `tenant=None` is for the worker and the
    reaper, which act on every tenant's jobs; each caller says which it is."""
    q = select(Job).where(Job.id == job_id)
    if tenant is not None:
        q = q.where(Job.tenant == tenant)
    return session.scalar(q)


def get_job(session: Session, job_id: str, *, tenant: str | None) -> Job:
    """`find_job`, or JobNotFound."""
    job = find_job(session, job_id, tenant=tenant)
    if job is None:
        raise JobNotFound(job_id)
    return job


#: `job_view`'s statements: every column of the job, and its stages in the order the ORM's
#: `Job.stages` has them.
_JOB_BY_ID = select(*Job.__table__.columns).where(
    Job.id == bindparam("job_id"), Job.tenant == bindparam("tenant")
)
_STAGES_OF = (
    select(*JobStage.__table__.columns)
    .where(JobStage.job_id == bindparam("job_id"))
    .order_by(JobStage.id)
)


def job_view(conn: Connection, job_id: str, *, tenant: str) -> dict[str, Any]:
    """`get_job` as plain values: the job's columns and `stages` (a list of the stages'
    columns), read with two statements in the caller's transaction. For the read clients poll
    (GET /jobs/{id}), where building ORM objects costs several times the query; JobOut
    validates these as it does a Job."""
    row = conn.execute(_JOB_BY_ID, {"job_id": job_id, "tenant": tenant}).mappings().one_or_none()
    if row is None:
        raise JobNotFound(job_id)
    view = dict(row)
    view["stages"] = [dict(s) for s in conn.execute(_STAGES_OF, {"job_id": job_id}).mappings()]
    return view


@dataclass(frozen=True)
class JobFilter:
    """What `GET /jobs` narrows to; every part is applied in SQL, so paging stays exact."""

    name_prefix: str | None = None
    statuses: Sequence[str] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    #: (key, value) pairs that must all be among the job's tags.
    tags: Sequence[tuple[str, str]] = ()
    #: Only the trials of this search.
    search_id: str | None = None


def _filtered(q: Select[Job], f: JobFilter) -> Select[Job]:
    if f.search_id is not None:
        q = q.where(Job.search_id == f.search_id)
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


class _SecondsBetween(FunctionElement[float]):
    """`end - start` in seconds as a float, or NULL when either is NULL. Datetime arithmetic is
    not portable SQL, so each database gets its own spelling (below)."""

    type = Float()
    name = "seconds_between"
    inherit_cache = True


@compiles(_SecondsBetween)
def _seconds_between_sqlite(element: _SecondsBetween, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite stores a time as text; julianday() reads it as fractional days.
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


@compiles(_SecondsBetween, "postgresql")
def _seconds_between_pg(element: _SecondsBetween, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(EXTRACT(EPOCH FROM ({end} - {start})) AS DOUBLE PRECISION)"


#: How long a finished job ran: NULL for one that has not finished or never started.
JOB_DURATION: ColumnElement[float] = _SecondsBetween(Job.started_at, Job.finished_at)

#: `sort=status` order: what needs attention first (running, then waiting, then the failures),
#: the successes last; `-status` reverses it.
STATUS_ORDER = (
    JobStatus.running,
    JobStatus.queued,
    JobStatus.failed,
    JobStatus.cancelled,
    JobStatus.succeeded,
)
_STATUS_RANK: ColumnElement[int] = case(
    {s.value: rank for rank, s in enumerate(STATUS_ORDER)},
    value=Job.status,
    else_=len(STATUS_ORDER),
)


def _newest_first() -> tuple[pagination.SortKey, ...]:
    """The tie-break after a sort's own key: newest first, then the id (unique)."""
    return (
        pagination.SortKey(Job.created_at, True, datetime),
        pagination.SortKey(Job.id, True, str),
    )


def _orders() -> dict[str, pagination.Order]:
    """Every `GET /jobs?sort=` value: name -> its total order (`-name` the reverse of `name`)."""
    k = pagination.SortKey
    oldest = (k(Job.created_at, False, datetime), k(Job.id, False, str))
    nulls_last = k(case((JOB_DURATION.is_(None), 1), else_=0), False, int)
    orders: dict[str, tuple[pagination.SortKey, ...]] = {
        "created_at": oldest,
        "-created_at": _newest_first(),
        "name": (k(Job.name, False, str), *_newest_first()),
        "-name": (k(Job.name, True, str), *_newest_first()),
        "status": (k(_STATUS_RANK, False, int), *_newest_first()),
        "-status": (k(_STATUS_RANK, True, int), *_newest_first()),
        # unfinished jobs (no duration yet) last in both directions, newest first among them
        "duration": (nulls_last, k(JOB_DURATION, False, float, True), *_newest_first()),
        "-duration": (nulls_last, k(JOB_DURATION, True, float, True), *_newest_first()),
    }
    return {name: pagination.Order(name, keys) for name, keys in orders.items()}


#: The orders `GET /jobs` offers, by their `sort=` name.
JOB_ORDERS = _orders()
DEFAULT_JOB_ORDER = "-created_at"


def list_jobs(
    session: Session,
    *,
    tenant: str,
    limit: int,
    cursor: str | None,
    filters: JobFilter | None = None,
    sort: str = DEFAULT_JOB_ORDER,
) -> pagination.Page[Job]:
    """In `sort` order (one of `JOB_ORDERS`; newest first by default), keyset-paged so pages
    never skip or repeat. The default order keeps the cursor format every list shares (clients
    hold such cursors); the others carry their own sort's key values. The page's stages come in
    one more query (the list shows them), not one per job."""
    q = _filtered(select(Job).where(Job.tenant == tenant), filters or JobFilter())
    q = q.options(selectinload(Job.stages))
    if sort == DEFAULT_JOB_ORDER:
        issued_for = pagination.ordered_cursor_name(cursor) if cursor else None
        if issued_for is not None:
            raise pagination.wrong_order_cursor(issued_for, sort)
        return pagination.paginate(
            session, q, created_col=Job.created_at, id_col=Job.id, limit=limit, cursor=cursor
        )
    return pagination.paginate_ordered(session, q, JOB_ORDERS[sort], limit=limit, cursor=cursor)


def jobs_with_stages(
    session: Session, job_ids: Sequence[str], *, tenant: str | None = None
) -> list[Job]:
    """The jobs among `job_ids` with their stages loaded in the same statement (a join, not a
    query per job), for callers that read many jobs on every poll; only `tenant`'s when given."""
    q = select(Job).where(Job.id.in_(job_ids)).options(joinedload(Job.stages))
    if tenant is not None:
        q = q.where(Job.tenant == tenant)
    return list(session.scalars(q).unique())


#: Which of a job's metric rows to read: one per epoch (a row with step -1), one per logged
#: step, or both.
MetricKind = Literal["epoch", "step", "all"]


def metric_rows(
    session: Session,
    job_id: str,
    kind: MetricKind = "epoch",
    *,
    limit: int | None = None,
    offset: int = 0,
) -> list[MetricRow]:
    """A job's metric rows in training order (by epoch, an epoch's row before its steps'), at
    most `limit` of them from `offset` on. Offsets page exactly through a finished job's rows
    (a resumed run rewrites its replayed epoch's rows in place); while a job trains, new rows
    come after the ones there, except that with kind "all" an epoch's own row, written when the
    epoch ends, sorts before that epoch's step rows."""
    q = select(MetricRow).where(MetricRow.job_id == job_id)
    if kind == "epoch":
        q = q.where(metric_series.epoch_rows(job_id))
    elif kind == "step":
        q = q.where(MetricRow.step >= 0)
    q = q.order_by(MetricRow.epoch, MetricRow.step).offset(offset)
    if limit is not None:
        q = q.limit(limit)
    return list(session.scalars(q))


def checkpoints(session: Session, job_id: str) -> list[Checkpoint]:
    """A job's checkpoints still on disk (pruned ones keep a row marked deleted), oldest first."""
    q = select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.deleted.is_(False))
    return list(session.scalars(q.order_by(Checkpoint.epoch, Checkpoint.step)))


#: Statuses that hold one of a tenant's job slots (`TAS_MAX_ACTIVE_JOBS_PER_TENANT`).
ACTIVE = (JobStatus.queued.value, JobStatus.running.value)

#: First key of the PostgreSQL advisory lock that serialises one tenant's job admissions (a
#: constant, so the lock never collides with another use of advisory locks on the database).
_ADMIT_LOCK = 0x7A5


def active_jobs(session: Session, tenant: str) -> int:
    """The tenant's queued and running jobs, counted in the database (an index on
    (tenant, created_at) narrows it to the tenant's rows)."""
    n = session.scalar(
        select(func.count()).select_from(Job).where(Job.tenant == tenant, Job.status.in_(ACTIVE))
    )
    return int(n or 0)


def lock_admissions(session: Session, tenant: str) -> None:
    """Serialise the tenant's job admissions (submit, clone, resume) until the caller's
    transaction ends, so a count taken after this is still true when the job is added: two
    submits racing at the limit admit one job, not two.

    SQLite needs nothing: every writing transaction begins IMMEDIATE, so writers already run one
    at a time. PostgreSQL runs them side by side under READ COMMITTED, where two submits would
    both count N-1 and both insert; a transaction-scoped advisory lock keyed by the tenant's name
    makes the second wait for the first's commit. It is released by the commit or the rollback,
    so a failed request never leaves it held, and other tenants' submits never wait on it."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_ADMIT_LOCK, func.hashtext(tenant))))


def count_by_status(session: Session) -> dict[str, int]:
    """Every tenant's jobs, counted by status (statuses with no job are absent)."""
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    return {status: int(n) for status, n in rows}


def queued_by_queue(session: Session) -> dict[str, int]:
    """Queued jobs counted by the queue they wait in (queues with none are absent)."""
    rows = session.execute(
        select(Job.queue, func.count())
        .where(Job.status == JobStatus.queued.value)
        .group_by(Job.queue)
    )
    return {queue: int(n) for queue, n in rows}


@dataclass(frozen=True)
class TrainingTotals:
    """What every job has trained, summed over completed epochs."""

    epochs: int
    samples: int


def training_totals(session: Session) -> TrainingTotals:
    """Epochs completed (one epoch metric row each) and the training samples they saw: a job's
    epochs times the training-set size its preprocess stage reported (the largest, if it ran
    more than once). Two aggregate queries; no rows leave the database."""
    epochs = (
        select(MetricRow.job_id, func.count().label("n"))
        .where(MetricRow.step == -1)
        .group_by(MetricRow.job_id)
        .subquery()
    )
    train = (
        select(
            JobStage.job_id,
            func.max(JobStage.outputs["train_samples"].as_integer()).label("samples"),
        )
        .where(JobStage.name == "preprocess")
        .group_by(JobStage.job_id)
        .subquery()
    )
    n_epochs = session.scalar(select(func.coalesce(func.sum(epochs.c.n), 0))) or 0
    n_samples = (
        session.scalar(
            select(func.coalesce(func.sum(epochs.c.n * train.c.samples), 0)).join_from(
                epochs, train, epochs.c.job_id == train.c.job_id
            )
        )
        or 0
    )
    return TrainingTotals(epochs=int(n_epochs), samples=int(n_samples))


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
        lease_store.close_stages(session, job.id, "cancelled", now)
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
    two resumes racing queue the job once; it is published once the caller's unit of work has
    committed."""
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
    for child in (MetricRow, MetricBlock, Checkpoint, JobStage, JobLog):
        session.execute(delete(child).where(child.job_id == job.id))
    done = rowcount(session.execute(delete(Job).where(Job.id == job.id, Job.status.in_(FINISHED))))
    if not done:  # resumed between the read and the delete
        session.refresh(job)
        raise JobNotFinished(job.id, job.status)
    session.expunge(job)

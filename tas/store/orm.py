"""ORM models. The SQL tables are the truth about a job; the broker only carries job ids."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite drops the zone; this puts it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONType, list[Any]: JSONType, datetime: UTCDateTime}


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINISHED = (JobStatus.succeeded.value, JobStatus.failed.value, JobStatus.cancelled.value)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
        Index("ix_jobs_status_lease", "status", "lease_until"),
        Index("uq_jobs_search_trial", "search_id", "trial_number", unique=True),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    name: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]]
    queue: Mapped[str] = mapped_column(String(32), default="default")
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value)
    stage: Mapped[str | None] = mapped_column(String(16))
    progress: Mapped[dict[str, Any] | None]
    latest_metrics: Mapped[dict[str, Any] | None]
    best_metrics: Mapped[dict[str, Any] | None]
    result: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    #: Runs that count against `max_attempts`: a preemption (a drained or stopped worker) does not.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    #: Every claim, preempted runs included: the fencing token of a lease and the key of a run's
    #: stages, so a stale owner can never write and two runs' stages never mix.
    claims: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: Runs that ended because their worker was stopped (SIGTERM/SIGINT, drained), not failed.
    preemptions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: One entry per run: {"run", "owner", "started_at", "ended_at", "outcome", "detail"} where
    #: outcome is preempted | killed | lease_expired | failed | succeeded | cancelled.
    attempt_log: Mapped[list[Any] | None]
    #: Free key-value labels, set at submit and by PATCH /jobs/{id}.
    tags: Mapped[dict[str, Any] | None]
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_until: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Times the reaper published this job again while it waited (its republish backoff).
    republishes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    #: The search this job is a trial of (null for a job submitted on its own), and the trial's
    #: number in the search's Optuna study: unique together (`uq_jobs_search_trial`, which also
    #: serves lookups by search), so a trial is never two jobs.
    search_id: Mapped[str | None] = mapped_column(String(32))
    trial_number: Mapped[int | None] = mapped_column(Integer)

    stages: Mapped[list[JobStage]] = relationship(
        back_populates="job", order_by="JobStage.id", cascade="all, delete-orphan"
    )


class JobStage(Base):
    """One pipeline stage of one attempt: collect, preprocess, train, evaluate, register."""

    __tablename__ = "job_stages"
    __table_args__ = (UniqueConstraint("job_id", "attempt", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="running")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    outputs: Mapped[dict[str, Any] | None]

    job: Mapped[Job] = relationship(back_populates="stages")


class MetricRow(Base):
    """A row per epoch (`step` null) and per logged step. Unique so a resumed attempt that replays an
    epoch overwrites rather than duplicates it."""

    __tablename__ = "job_metrics"
    __table_args__ = (UniqueConstraint("job_id", "epoch", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer, default=-1)
    values: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MetricBlock(Base):
    """The min, max and last value of each numeric key over 2**level consecutive step rows of a
    job (positions start..stop-1 of its step series, in training order), written as the rows
    arrive. A chart of a long run reads about `max_points` of these instead of every row: see
    `tas.store.metric_rollup`. Only whole blocks are kept; a block is dropped and rebuilt when
    a resumed run rewrites one of its rows."""

    __tablename__ = "job_metric_blocks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    level: Mapped[int] = mapped_column(Integer, primary_key=True)
    start: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: One past the block's last position (start + 2**level), so "every block reaching past
    #: position p" is one comparison whatever the level.
    stop: Mapped[int] = mapped_column(Integer)
    first_epoch: Mapped[int] = mapped_column(Integer)
    first_step: Mapped[int] = mapped_column(Integer)
    last_epoch: Mapped[int] = mapped_column(Integer)
    last_step: Mapped[int] = mapped_column(Integer)
    #: {"min": {key: number}, "max": {...}, "last": {...}}; a key is absent where no row of the
    #: block (for "last": its last row) holds a number under it.
    stats: Mapped[dict[str, Any]]


class Checkpoint(Base):
    __tablename__ = "job_checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer, default=0)
    path: Mapped[str] = mapped_column(String(1024))
    metric_name: Mapped[str | None] = mapped_column(String(64))
    metric_value: Mapped[float | None] = mapped_column(Float)
    is_best: Mapped[bool] = mapped_column(Boolean, default=False)
    sha256: Mapped[str | None] = mapped_column(String(64))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    """A registered model: every succeeded job adds a version under its name."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("tenant", "name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    model_dir: Mapped[str] = mapped_column(String(1024))
    card: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelAlias(Base):
    """`name@alias` → a version. Moving an alias is the deploy step."""

    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("tenant", "name", "alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    name: Mapped[str] = mapped_column(String(64))
    alias: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Dataset(Base):
    """An uploaded dataset: the file stored once per content hash (`uploads/datasets/<sha256>/`),
    with the schema inferred at upload. `fingerprint` is the hash of the bytes and the parsing
    options together: the same bytes read with another target column are another dataset."""

    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("tenant", "fingerprint", name="uq_datasets_tenant_fingerprint"),
        Index("ix_datasets_tenant_created", "tenant", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    name: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(32))  # csv | npz | image_folder | image_annotations
    sha256: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    #: Relative to the uploads directory (`datasets/<sha256>/<file name>`).
    path: Mapped[str] = mapped_column(String(1024))
    schema: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WeightsFile(Base):
    """A safetensors file uploaded for `model.init_from: "weights:<id>"`, stored once per content
    hash (`uploads/weights/<sha256>.safetensors`); the row makes it the tenant's."""

    __tablename__ = "weights_files"
    __table_args__ = (UniqueConstraint("tenant", "sha256", name="uq_weights_files_tenant_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    sha256: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    tensors: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def public_id(self) -> str:
        return self.sha256[:16]


class Worker(Base):
    """A live worker and what it can run, refreshed by its heartbeat. A job whose queue no worker
    with a recent heartbeat serves is reported as waiting for one instead of failing later."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # the Celery node name
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[Any]]
    #: e.g. ["cpu"] or ["cpu", "cuda:0"]
    devices: Mapped[list[Any]]
    #: {"memory_mb": ..., "gpu_memory_mb": [...], "cpus": ...}
    capacity: Mapped[dict[str, Any]]
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    #: online | draining | offline
    status: Mapped[str] = mapped_column(String(16), default="online")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key: `tas_<id>_<secret>`. Only a keyed hash of the secret is kept, so a leaked
    database (or backup) yields no usable key without the server secret as well."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_tenant", "tenant"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(255))
    scopes: Mapped[list[Any]]
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class AuditEvent(Base):
    """One write: who (key, tenant) did what (action, route) to which object (target), when."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_tenant_created", "tenant", "created_at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    tenant: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))
    route: Mapped[str] = mapped_column(String(255))
    target: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[dict[str, Any] | None]


class JobLog(Base):
    """One line of a job's log: a stage starting or ending, a warning, the training's own log
    line, a failure's traceback, a resume. `id` is the read cursor (it only goes up); `attempt`
    and `worker` say which run wrote it (`worker` is null for lines the API writes). No tenant:
    a line is read through its job, whose tenant is checked."""

    __tablename__ = "job_logs"
    __table_args__ = (Index("ix_job_logs_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: The job's claim number of the run that wrote it (the API's lines: of the run before them).
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    #: info | warning | error
    level: Mapped[str] = mapped_column(String(16), default="info")
    #: stage | train | worker | api
    source: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)


class SearchStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class Search(Base):
    """A hyperparameter search: a base job spec, a space over spec paths, an objective, and the
    Optuna study (`study_name`, in Optuna's own storage) that proposes each trial. Its trials are
    ordinary jobs (`Job.search_id`); `SearchTrial` is what the controller last saw of each.

    `settled` is false while the controller still has work to do (start trials, tell results,
    finish; after a cancel, tell Optuna the trials that were stopped); the API process that holds
    the lease (`lease_owner`, `lease_until`) is the one driving it."""

    __tablename__ = "searches"
    __table_args__ = (
        Index("ix_searches_tenant_created", "tenant", "created_at", "id"),
        Index("ix_searches_settled", "settled"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=SearchStatus.queued.value)
    #: The base job spec every trial starts from (as the client gave it, checked).
    spec: Mapped[dict[str, Any]]
    #: spec path -> {"type": "float" | "int" | "categorical", ...}
    space: Mapped[dict[str, Any]]
    #: {"metric": ..., "direction": "maximize" | "minimize"}
    objective: Mapped[dict[str, Any]]
    #: {"type": "tpe" | "random" | "grid", "seed": ...}
    sampler: Mapped[dict[str, Any]]
    #: {"type": "median" | "asha" | "none", ...knobs}
    pruner: Mapped[dict[str, Any]]
    max_trials: Mapped[int] = mapped_column(Integer)
    max_concurrent: Mapped[int] = mapped_column(Integer)
    model_name: Mapped[str | None] = mapped_column(String(64))
    study_name: Mapped[str] = mapped_column(String(128))
    #: The seed the sampler draws from: the client's, or one drawn at creation when it gave
    #: none, so a restarted controller goes on with the same draws either way.
    seed: Mapped[int] = mapped_column(BigInteger)
    best_trial: Mapped[int | None] = mapped_column(Integer)
    #: {"name", "version"}: where the best trial's model was registered (model_name).
    model: Mapped[dict[str, Any] | None]
    #: spec path -> share of the objective's variance (Optuna's fANOVA), once enough trials
    #: have completed.
    importances: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    #: Why no trial is being started now (e.g. the tenant is at its job limit); null otherwise.
    waiting_for: Mapped[str | None] = mapped_column(Text)
    settled: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SearchTrial(Base):
    """One trial of a search as the controller last saw it: its job, its parameters (spec path
    -> value), its state in the study and the objective per epoch. Written with the trial's job
    (one transaction) and kept up to date by the controller; the API reads searches from these
    rows alone, never from Optuna's storage."""

    __tablename__ = "search_trials"

    search_id: Mapped[str] = mapped_column(
        ForeignKey("searches.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: No foreign key: a finished trial's job may be deleted, and its row stays the search's.
    job_id: Mapped[str | None] = mapped_column(String(32), index=True)
    params: Mapped[dict[str, Any]]
    #: running | complete | pruned | failed
    state: Mapped[str] = mapped_column(String(16), default="running")
    value: Mapped[float | None] = mapped_column(Float)
    #: {"<epoch>": objective value}
    intermediate: Mapped[dict[str, Any]]
    epochs: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

"""Response schemas for jobs (apart from the ORM models, so the API's shape is a choice, not a leak)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from app.schemas.workers import WaitingFor
from tas.core.spec import MAX_MINUTES, TagKey, TagValue


class ProgressOut(BaseModel):
    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int
    fraction: float
    samples_per_second: float | None = None
    eta_seconds: float | None = None


class ErrorOut(BaseModel):
    type: str
    message: str
    hint: str | None = None
    stage: str | None = None


class StageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    attempt: int
    status: str
    started_at: datetime
    finished_at: datetime | None
    outputs: dict[str, Any] | None


class AttemptOut(BaseModel):
    """One run of a job: who ran it, when, and how it ended."""

    model_config = ConfigDict(extra="allow")

    run: int
    owner: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str = Field(
        description="running | succeeded | failed | cancelled | preempted (its worker was"
        " stopped; not counted in attempts) | killed (its process died: `signal` says how) |"
        " lease_expired (its worker stopped renewing the lease)"
    )
    detail: str | None = None
    stage: str | None = None


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    stage: str | None = Field(description="collect | preprocess | train | evaluate | register")
    queue: str
    progress: ProgressOut | None
    latest_metrics: dict[str, Any] | None
    best_metrics: dict[str, Any] | None
    result: dict[str, Any] | None
    error: ErrorOut | None
    attempts: int = Field(description="Runs that counted against max_attempts.")
    max_attempts: int
    preemptions: int = Field(
        0, description="Runs handed back because their worker was stopping; never a failure."
    )
    attempt_log: list[AttemptOut] = Field(default_factory=list, description="One entry per run.")
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    spec: dict[str, Any]
    stages: list[StageOut]
    tags: dict[str, str] = Field(
        default_factory=dict, description="Free labels: set at submit, changed by PATCH."
    )
    search_id: str | None = Field(
        None, description="The search this job is a trial of (GET /searches/{id}); null if none."
    )
    trial_number: int | None = Field(None, description="Its trial's number in that search.")
    waiting_for: WaitingFor | None = Field(
        None,
        description="For a queued job that no live worker can take (none consumes its queue):"
        " the queue and why; null otherwise. Read from the workers' heartbeats at request time.",
    )

    @field_validator("attempt_log", mode="before")
    @classmethod
    def _no_log(cls, v: Any) -> Any:
        return [] if v is None else v

    @field_validator("tags", mode="before")
    @classmethod
    def _no_tags(cls, v: Any) -> Any:
        return {} if v is None else v


class SubmittedJobOut(JobOut):
    warnings: list[str] = Field(
        default_factory=list,
        description="Accepted, but: e.g. no live worker consumes the job's queue (also sent as a"
        " `Warning` header).",
    )


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last."
    )


#: What a route declared with `response_model=JobOut` / `JobPage` sends, made by the route itself
#: (the same validation from the ORM objects, the same JSON bytes as FastAPI's): the polled read
#: paths build it on the worker thread that read the rows, where FastAPI would take another hop.
JOB_OUT: TypeAdapter[JobOut] = TypeAdapter(JobOut)
JOB_PAGE: TypeAdapter[JobPage] = TypeAdapter(JobPage)


def job_json(job: object) -> bytes:
    """A job (an ORM row, with `waiting_for` set) as `JobOut` JSON."""
    return JOB_OUT.dump_json(JOB_OUT.validate_python(job, from_attributes=True), by_alias=True)


def job_page_json(page: object) -> bytes:
    """A page of jobs (`items`, `next_cursor`) as `JobPage` JSON."""
    return JOB_PAGE.dump_json(JOB_PAGE.validate_python(page, from_attributes=True), by_alias=True)


class MetricRowOut(BaseModel):
    """One epoch (`step` null) or one logged step; the metric columns depend on the task."""

    model_config = ConfigDict(extra="allow")

    epoch: int
    step: int | None = None


class LogLineOut(BaseModel):
    """One line of a job's log."""

    model_config = ConfigDict(from_attributes=True)

    id: int = Field(description="The line's cursor: pass it as ?after= to read what follows.")
    created_at: datetime
    attempt: int = Field(
        description="The run (the job's claim number) that wrote it; on the API's lines, the"
        " run before them (0: none yet)."
    )
    worker: str | None = Field(description="The worker that wrote it; null for the API's lines.")
    level: str = Field(description="info | warning | error")
    source: str = Field(description="stage | train | worker | api | reaper")
    message: str


class LogPage(BaseModel):
    items: list[LogLineOut]
    next_after: int | None = Field(
        description="Pass as ?after= for the lines written since (the last line's id; the"
        " request's own `after` when there were none): a follower polls with it."
    )


class CheckpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    step: int
    attempt: int
    metric_name: str | None
    metric_value: float | None
    is_best: bool
    sha256: str | None
    created_at: datetime


class ResumeIn(BaseModel):
    """`POST /jobs/{id}/resume`'s optional body: only what a checkpoint does not depend on."""

    model_config = ConfigDict(extra="forbid")

    max_minutes: float | None = Field(
        None,
        gt=0.0,
        le=MAX_MINUTES,
        allow_inf_nan=False,
        description="A new training.max_minutes (training time over all runs); required, and"
        " larger, when the job stopped at its time limit.",
    )
    epochs: None = Field(
        None,
        description="Not changeable: the checkpoint (and a schedule such as cosine) is bound to"
        " the epochs it was written for. POST /jobs/{id}/clone with"
        ' {"training": {"epochs": N}} starts a new job instead.',
    )

    @field_validator("epochs", mode="before")
    @classmethod
    def _epochs_fixed(cls, v: Any) -> None:
        if v is not None:
            raise ValueError(
                "epochs cannot change on resume: the checkpoint was written for the job's"
                ' epochs; POST /jobs/{id}/clone with {"training": {"epochs": N}} starts a new job'
            )
        return None


class JobPatch(BaseModel):
    """`PATCH /jobs/{id}`: tags merged into the job's (a null value removes the key)."""

    model_config = ConfigDict(extra="forbid")

    tags: dict[TagKey, TagValue | None] = Field(
        ..., examples=[{"team": "vision", "stale": None}], max_length=64
    )


class PredictionsOut(BaseModel):
    """`GET /jobs/{id}/predictions`: a page of rows, one per held-out sample, from the registered
    weights."""

    job_id: str
    split: str = Field(description="val | test")
    task: str = Field(description="classification | regression")
    weights: dict[str, Any] | None = Field(
        description="Which epoch's weights made them (as the job's result.weights)."
    )
    count: int = Field(description="The split's samples, all pages together.")
    offset: int = Field(description="The first row of this page (0-based).")
    limit: int = Field(description="At most this many rows on this page.")
    predictions: list[dict[str, Any]] = Field(
        description="This page's rows, in the split's order. Classification: index (the"
        " sample's row in the data before splitting), label, class_name, predicted,"
        " predicted_class_name, probability (of the predicted"
        " class), correct. Regression: index, value, predicted, error (predicted - value), in the"
        " target's units; lists for several target columns.",
        examples=[
            [
                {
                    "index": 17,
                    "label": 3,
                    "class_name": "3",
                    "predicted": 8,
                    "predicted_class_name": "8",
                    "probability": 0.71,
                    "correct": False,
                }
            ]
        ],
    )

"""Jobs: submission (the checks that need more than the spec itself, then the row), clone,
resume and delete."""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.services import quotas
from app.services.artifacts import store_errors
from tas.core.data.dataset import DatasetInfo
from tas.core.data.registry import BUILTIN_DATASETS
from tas.core.footprint import Limit
from tas.core.footprint import size_problems as footprint_problems
from tas.core.losses import LOSSES
from tas.core.spec import MAX_TAGS, TAG_KEY_PATTERN, JobSpec, resolved_loss, spec_problems
from tas.errors import DatasetNotFound, InvalidInput, JobNotResumable
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store import logs as log_store
from tas.store import usage as usage_store
from tas.store import workers as worker_store
from tas.store.artifacts import open_artifacts
from tas.store.datasets import data_source
from tas.store.orm import Job, JobStatus, Worker
from tas.store.sources import InitSource, InitSourceError, resolve_init_source
from tas.store.unit_of_work import after_commit

log = logging.getLogger(__name__)

Problems = list[tuple[tuple[str | int, ...], str]]


def dataset_info(session: Session, spec: JobSpec, tenant: str, settings: Settings) -> DatasetInfo:
    """The schema the spec is checked against: a built-in's, or the tenant's upload's (422 at
    `dataset.id` for an unknown one)."""
    try:
        return data_source(session, spec.dataset, tenant=tenant, settings=settings).info
    except DatasetNotFound as exc:
        raise InvalidInput(
            [
                (
                    ("body", "dataset", "id"),
                    f"no uploaded dataset {spec.dataset.id!r}; GET /datasets lists your uploads"
                    f" (POST /datasets adds one); built-ins go in dataset.name:"
                    f" {', '.join(sorted(BUILTIN_DATASETS))}",
                )
            ]
        ) from exc


def transfer_problems(
    session: Session, spec: JobSpec, info: DatasetInfo, tenant: str, settings: Settings
) -> tuple[Problems, dict[str, Any] | None]:
    """`model.init_from` resolved and checked against the model this spec builds (layer by layer,
    from the file's header), and `model.freeze` against its layers. Returns the problems and what
    init_from resolved to (pinned with the job)."""
    from tas.core.transfer import freeze_problems, init_problems

    loss = LOSSES[resolved_loss(spec, info)]
    out_dim = loss.out_dim(info.num_classes, info.target_dim)
    problems: Problems = []
    pinned = None
    if spec.model.init_from is not None:
        # `held`: the file's cached copy (with an artifact store) kept from eviction while its
        # header is read.
        with ExitStack() as held:
            try:
                source = _init_source(session, tenant, spec.model.init_from, settings, held)
            except InitSourceError as exc:
                problems.append((("body", "model", "init_from"), exc.message))
            else:
                pinned = source.pinned
                problems += _checked(
                    ("body", "model", "init_from"),
                    lambda: init_problems(spec, info, out_dim, source.path),
                )
    problems += _checked(("body", "model", "freeze"), lambda: freeze_problems(spec, info, out_dim))
    return problems, pinned


def _init_source(
    session: Session, tenant: str, ref: str, settings: Settings, held: ExitStack
) -> InitSource:
    """`resolve_init_source`, with an artifact store's failures as a client sees them when it
    serves a model: one that does not answer is a 503 with Retry-After (the request was fine: try
    again), a corrupt object a 502 (`store_errors`); a source that is simply gone stays the 422
    InitSourceError. This machine's own cache disk failing stays the server's error."""
    if not settings.remote_artifacts:
        return resolve_init_source(session, tenant, ref, settings, hold=held)
    artifacts = open_artifacts(settings)
    with store_errors(f"init_from {ref.strip()}", artifacts.cache.root):
        return resolve_init_source(session, tenant, ref, settings, hold=held)


def with_time_limit(spec: JobSpec, settings: Settings) -> JobSpec:
    """Every job has a training time limit: a spec that gives no `training.max_minutes` gets
    TAS_DEFAULT_JOB_MINUTES (stored with the job, so the worker and a later clone see it), and
    one above TAS_MAX_JOB_MINUTES is a 422."""
    most = settings.max_job_minutes
    if "max_minutes" not in spec.training.model_fields_set:
        minutes = min(settings.default_job_minutes, most)
        training = spec.training.model_copy(update={"max_minutes": minutes})
        spec = spec.model_copy(update={"training": training})
    if spec.training.max_minutes > most:
        raise InvalidInput(
            [minutes_problem(("body", "training", "max_minutes"), spec.training.max_minutes, most)]
        )
    return spec


def minutes_problem(
    loc: tuple[str, ...], minutes: float, most: float
) -> tuple[tuple[str, ...], str]:
    return (
        loc,
        f"{minutes:g} minutes is above this deployment's time limit; allowed: above 0, at most"
        f" {most:g} minutes (TAS_MAX_JOB_MINUTES)",
    )


def size_problems(
    session: Session, spec: JobSpec, info: DatasetInfo, settings: Settings
) -> Problems:
    """A model or a training run too big for this deployment, refused before anything is
    allocated or queued: the parameters are counted on the meta device (milliseconds, no memory,
    even for billions of them), and the training footprint (`tas.core.footprint.Footprint`) is
    held against `training_memory_limit`, and the work of one training step against
    `step_limit`: a cancel is seen between steps, so a job whose step runs for minutes would
    make its cancel wait that long."""
    live = worker_store.live(session, heartbeat_s=settings.worker_heartbeat_s)
    problems = processes_problems(spec, settings, live)
    loss = LOSSES[resolved_loss(spec, info)]
    out_dim = loss.out_dim(info.num_classes, info.target_dim)
    memory = training_memory_limit(session, spec, settings, live)
    try:
        found = footprint_problems(
            spec,
            tuple(info.input_shape),
            out_dim,
            max_parameters=Limit(settings.max_parameters, "TAS_MAX_PARAMETERS"),
            max_memory_mb=memory,
            max_step_tflop=step_limit(spec, settings, live),
        )
    except Exception as exc:  # a spec the model builder refuses: a 422 there, never a 500
        return [*problems, (("body", "model"), f"this model cannot be built: {exc}")]
    return [*problems, *((("body", *loc), msg) for loc, msg in found)]


def processes_problems(spec: JobSpec, settings: Settings, live: Sequence[Worker]) -> Problems:
    """`resources.processes` against what the live workers of the job's queue offer: one GPU per
    process for a cuda job, and for the others the most of a worker's GPUs (where an `auto` job
    trains on them) and CPUs (gloo's processes). The largest offer is the bound, as for memory: a
    job is refused only when no live worker could ever run it; with none live (or none saying),
    TAS_MAX_PROCESSES."""
    n = spec.resources.processes
    if n == 1:
        return []
    device = spec.resources.device
    queue = job_store.queue_for(device)
    best: tuple[int, str, str] | None = None
    for w in live:
        if queue not in (w.queues or []):
            continue
        offer = _processes_offer(w, device)
        if offer is not None and (best is None or offer[0] > best[0]):
            best = (*offer, w.id)
    loc = ("body", "resources", "processes")
    if best is None:
        if n <= settings.max_processes:
            return []
        return [
            (
                loc,
                f"{n} processes is above this deployment's limit while no live worker of queue"
                f" {queue!r} says what it offers: at most {settings.max_processes}"
                " (TAS_MAX_PROCESSES)",
            )
        ]
    most, unit, worker_id = best
    if n <= most:
        return []
    per = "one process per GPU" if unit == "GPUs" else "one process per CPU"
    return [
        (
            loc,
            f"{n} processes, but the largest live worker on queue {queue!r} offers {most} {unit}"
            f" (worker {worker_id}); at most {most} ({per})",
        )
    ]


def _processes_offer(w: Worker, device: str) -> tuple[int, str] | None:
    """How many processes a worker can run for a job on `device`, and in what unit; None when it
    does not say."""
    gpus = sum(1 for d in w.devices or [] if str(d.get("id", "")).startswith("cuda"))
    if device == "cuda":
        return gpus, "GPUs"
    cpus = (w.capacity or {}).get("cpus")
    cpus = cpus if isinstance(cpus, int) and not isinstance(cpus, bool) else None
    if device == "auto" and gpus and (cpus is None or gpus >= cpus):
        return gpus, "GPUs"
    return (cpus, "CPUs") if cpus is not None else None


def training_memory_limit(
    session: Session, spec: JobSpec, settings: Settings, live: Sequence[Worker] | None = None
) -> Limit:
    """The most memory a job of `spec` can train in: the largest of the live workers that consume
    its queue (their GPU memory where the job trains on CUDA: `device` cuda, or auto on a worker
    with a GPU), or TAS_MAX_TRAINING_MEMORY_MB when none of them is live or reports its memory.
    The largest, not the smallest: a job is refused only when no worker could ever run it.
    `live`: the live workers, when the caller has read them already."""
    device = spec.resources.device
    queue = job_store.queue_for(device)
    best: Limit | None = None
    if live is None:
        live = worker_store.live(session, heartbeat_s=settings.worker_heartbeat_s)
    for w in live:
        if queue not in (w.queues or []):
            continue
        found = _training_memory_mb(w.capacity or {}, device)
        if found is not None and (best is None or found[0] > best.value):
            mb, kind = found
            best = Limit(
                mb,
                f"the {kind} of worker {w.id}, the largest live one on queue {queue!r}",
                per_process=kind == "GPU memory",  # a process a GPU
            )
    return best or Limit(settings.max_training_memory_mb, "TAS_MAX_TRAINING_MEMORY_MB")


def step_limit(spec: JobSpec, settings: Settings, live: Sequence[Worker]) -> Limit:
    """The most work (TFLOP) one training step may be: a GPU's bound for a cuda job, and for an
    auto job while a live worker of its queue has a GPU (the largest bound, as for memory: a job
    is refused only when no worker could run it); a CPU's otherwise."""
    device = spec.resources.device
    queue = job_store.queue_for(device)
    on_gpu = device == "cuda" or (
        device == "auto"
        and any(
            queue in (w.queues or []) and _numbers((w.capacity or {}).get("gpu_memory_mb"))
            for w in live
        )
    )
    if on_gpu:
        return Limit(settings.max_gpu_step_tflop, "TAS_MAX_GPU_STEP_TFLOP")
    return Limit(settings.max_step_tflop, "TAS_MAX_STEP_TFLOP")


def _numbers(value: object) -> list[float]:
    if not isinstance(value, list):
        return []
    return [float(v) for v in value if isinstance(v, int | float) and not isinstance(v, bool)]


def _training_memory_mb(capacity: dict[str, Any], device: str) -> tuple[float, str] | None:
    """What a worker with this `capacity` (its row's JSON) gives a job's training, in MiB, and
    which memory that is: its largest GPU's when the job trains on CUDA there, else its main
    memory; None if unknown."""
    gpus = _numbers(capacity.get("gpu_memory_mb"))
    if device != "cpu" and gpus:
        return max(gpus), "GPU memory"
    if device == "cuda":
        return None
    found = _numbers([capacity.get("memory_mb")])
    return (found[0], "memory") if found else None


def _checked(loc: tuple[str, ...], check: Callable[[], list[str]]) -> Problems:
    """A core check's messages at `loc`; a check that cannot even build the model (a spec the
    model builder refuses) is reported there too, never as a 500."""
    try:
        return [(loc, msg) for msg in check()]
    except Exception as exc:
        return [(("body", "model"), f"this model cannot be built: {exc}")]


def submit(
    session: Session, spec: JobSpec, *, tenant: str, max_attempts: int, settings: Settings
) -> Job:
    """Validate against the dataset's schema and add the job; the route queues its message for
    after the request's commit.

    What `model.init_from` resolved to is kept in the job's `result.init_from` (the worker trains
    from exactly that, and GET /jobs/{id} shows it). The tenant's quotas are checked first, so a
    refused submit costs two queries."""
    quotas.admit_job(session, settings, tenant)
    spec = with_time_limit(spec, settings)
    info = dataset_info(session, spec, tenant, settings)
    problems: Problems = [(("body", *loc), msg) for loc, msg in spec_problems(spec, info)]
    if problems:
        raise InvalidInput(problems)
    problems = size_problems(session, spec, info, settings)
    if problems:
        raise InvalidInput(problems)
    problems, pinned = transfer_problems(session, spec, info, tenant, settings)
    if problems:
        raise InvalidInput(problems)
    # Tags live on the job (PATCH changes them), not in the spec the worker trains from.
    job = job_store.create_job(
        session,
        spec.model_dump(mode="json", exclude={"tags"}),
        tenant=tenant,
        max_attempts=max_attempts,
    )
    job.tags = dict(spec.tags)
    if pinned is not None:
        job.result = {"init_from": pinned}
    return job


def job_filter(
    *,
    name: str | None,
    status: list[str] | None,
    created_after: datetime | None,
    created_before: datetime | None,
    tag: list[str] | None,
    search_id: str | None = None,
) -> job_store.JobFilter:
    """`GET /jobs`' query, checked (a 422 naming the parameter and what it takes)."""
    problems: Problems = []
    statuses = [s.strip() for raw in status or [] for s in raw.split(",") if s.strip()]
    allowed = [s.value for s in JobStatus]
    for s in statuses:
        if s not in allowed:
            problems.append(
                (("query", "status"), f"unknown status {s!r}; allowed: {', '.join(allowed)}")
            )
    after, before = _utc(created_after), _utc(created_before)
    if after is not None and before is not None and after >= before:
        problems.append((("query", "created_before"), "must be later than created_after"))
    tags: list[tuple[str, str]] = []
    for raw in tag or []:
        key, sep, value = raw.partition(":")
        if not sep or not re.match(TAG_KEY_PATTERN, key):
            problems.append(
                (
                    ("query", "tag"),
                    f"{raw!r} is not key:value (e.g. team:vision); a key is letters, digits"
                    " and . _ / -",
                )
            )
        else:
            tags.append((key, value))
    if len(tags) > MAX_TAGS:
        problems.append((("query", "tag"), f"at most {MAX_TAGS} tag filters"))
    if problems:
        raise InvalidInput(problems)
    return job_store.JobFilter(
        name_prefix=name or None,
        statuses=tuple(dict.fromkeys(statuses)),
        created_after=after,
        created_before=before,
        tags=tuple(tags),
        search_id=search_id or None,
    )


def job_order(sort: str | None) -> str:
    """`GET /jobs`' `sort`, checked: one of the store's orders (a 422 naming `sort` and listing
    them otherwise); none given is the default, newest first."""
    if sort is None or sort == "":
        return job_store.DEFAULT_JOB_ORDER
    if sort not in job_store.JOB_ORDERS:
        allowed = ", ".join(job_store.JOB_ORDERS)
        raise InvalidInput([(("query", "sort"), f"unknown sort {sort!r}; allowed: {allowed}")])
    return sort


def _utc(moment: datetime | None) -> datetime | None:
    """A time without a zone is UTC (the zone every stored time is in)."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def validated_spec(raw: Any) -> JobSpec:
    """A spec built on the server (a clone's merge) checked exactly as a POST /jobs body is: a
    422 whose `loc` names the field under `body`."""
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from exc


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` over `base`, section by section: `{"training": {"lr": 0.1}}` changes only
    the lr. A list or a null replaces the value whole."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def clone(
    session: Session,
    job: Job,
    overrides: dict[str, Any] | None,
    *,
    tenant: str,
    max_attempts: int,
    settings: Settings,
) -> Job:
    """A new job from `job`'s spec and current tags, with `overrides` merged in, submitted as
    POST /jobs would be (init_from is resolved again, as at any submit)."""
    base = {**job.spec, "tags": dict(job.tags or {})}
    spec = validated_spec(deep_merge(base, overrides or {}))
    return submit(session, spec, tenant=tenant, max_attempts=max_attempts, settings=settings)


def resume(session: Session, job: Job, *, max_minutes: float | None, settings: Settings) -> Job:
    """Queue a failed or cancelled job again (the worker starts from its last good checkpoint).
    Only `max_minutes` may change: the checkpoint is bound to the rest of the spec. It takes one
    of the tenant's job slots, as a submit does."""
    if job.status not in job_store.RESUMABLE:
        raise JobNotResumable(job.id, job.status)
    if max_minutes is not None and max_minutes > settings.max_job_minutes:
        raise InvalidInput(
            [minutes_problem(("body", "max_minutes"), max_minutes, settings.max_job_minutes)]
        )
    limit = float(job.spec["training"]["max_minutes"])
    if (job.error or {}).get("type") == "TimeLimitExceeded" and (
        max_minutes is None or max_minutes <= limit
    ):
        # Training time carries over in the checkpoint: the same limit would stop it at once.
        raise InvalidInput(
            [
                (
                    ("body", "max_minutes"),
                    f"this job stopped at its time limit of {limit:g} minutes of training; resume"
                    f' it with a larger one, e.g. {{"max_minutes": {limit * 2:g}}}',
                )
            ]
        )
    quotas.admit_job(session, settings, job.tenant)
    spec = None
    if max_minutes is not None:
        spec = {**job.spec, "training": {**job.spec["training"], "max_minutes": max_minutes}}
    was = job.status
    resumed = job_store.resume_job(session, job, spec=spec)
    more = f", training.max_minutes now {max_minutes:g}" if max_minutes is not None else ""
    log_store.note(
        session,
        job.id,
        job.claims,
        f"resume requested ({was} before){more}: queued again, to go on from its last checkpoint",
        log_store.LogLimits.of(settings),
    )
    return resumed


def delete(session: Session, job: Job, settings: Settings) -> Path:
    """Delete a finished job's rows; returns its directory, removed by the caller after the
    commit (files go only once nothing in the database points at them). With a remote artifact
    store its objects are deleted after the commit as well."""
    job_id, tenant = job.id, job.tenant
    job_store.delete_job(session, job)
    after_commit(session, job_store.delete_stored, settings, job_id, tenant=tenant)
    return job_store.job_dir(settings.resolved_artifact_dir, job.id, tenant=job.tenant)


def remove_dir(path: Path) -> None:
    """Best effort: a file that cannot be removed is logged, never a failed request (the rows
    are already gone, and a leftover directory is only space)."""

    def report(_func: Any, failed: str, exc_info: Any) -> None:
        log.warning("could not remove %s: %s", failed, exc_info[1])

    if path.exists():
        shutil.rmtree(path, onerror=report)
    usage_store.forget_walk(path.parent)  # the tenant's jobs root: its stored bytes changed

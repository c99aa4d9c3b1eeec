from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Body, Query, Request, Response, status
from pydantic_core import to_json
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from app.api.deps import (
    AuditedRouter,
    JobDep,
    JobIdPath,
    PublisherDep,
    SessionDep,
    SettingsDep,
    TenantDep,
    read,
    read_kept,
    requires,
)
from app.api.query import StrictQuery
from app.schemas.jobs import (
    CheckpointOut,
    JobOut,
    JobPage,
    JobPatch,
    LogPage,
    PredictionsOut,
    ResumeIn,
    SubmittedJobOut,
    job_json,
    job_page_json,
)
from app.schemas.metrics import MetricSeriesOut
from app.services import job_logs as log_service
from app.services import jobs as job_service
from app.services import predictions as prediction_service
from app.services import workers as worker_service
from tas.core.spec import JobSpec
from tas.errors import InvalidInput
from tas.store import jobs as job_store
from tas.store import logs as log_store
from tas.store import metric_rollup, metric_series
from tas.store.orm import Checkpoint, Job
from tas.store.unit_of_work import after_commit

#: Writes audited (`AuditedRouter`); reads, which the dashboard polls, carry no audit hook.
router = AuditedRouter(
    prefix="/jobs", tags=["jobs"], dependencies=[requires("jobs:read", "jobs:write")]
)


#: What a submit, clone or resume answers when the tenant is at a quota (app/services/quotas.py).
_QUOTA_DOC: dict[int | str, dict[str, Any]] = {
    429: {"description": "The tenant's queued + running jobs or stored bytes are at their quota"}
}


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=SubmittedJobOut, responses=_QUOTA_DOC
)
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
    after_commit(session, publisher.publish, job.id, job.queue)
    response.headers["Location"] = f"/jobs/{job.id}"
    worker_service.warn_if_unservable(session, job, settings, response)
    return job


@router.get("", response_model=JobPage, dependencies=[StrictQuery])
async def list_jobs(
    request: Request,
    tenant: TenantDep,
    settings: SettingsDep,
    name: Annotated[
        str | None, Query(max_length=64, description="Jobs whose name starts with this.")
    ] = None,
    status: Annotated[
        list[str] | None,
        Query(description="One or several (repeated, or comma-separated): any of them."),
    ] = None,
    created_after: Annotated[
        datetime | None, Query(description="ISO 8601, inclusive; without a zone: UTC.")
    ] = None,
    created_before: Annotated[
        datetime | None, Query(description="ISO 8601, exclusive; without a zone: UTC.")
    ] = None,
    tag: Annotated[
        list[str] | None,
        Query(description="key:value, repeatable: jobs carrying every one of them."),
    ] = None,
    sort: Annotated[
        str | None,
        Query(
            max_length=32,
            description="created_at, -created_at (the default: newest first), name, -name,"
            " status, -status (running, queued, failed, cancelled, succeeded), duration,"
            " -duration (finished_at - started_at; jobs not finished last either way). Ties:"
            " newest first. A cursor pages only the sort that issued it.",
        ),
    ] = None,
    search_id: Annotated[
        str | None, Query(max_length=64, description="Only the trials of this search.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    """Newest first unless `sort` says otherwise, filtered and ordered in the database, so the
    cursor pages through the filtered list exactly. Read and turned into JSON in one
    worker-thread hop, as GET /jobs/{id}."""
    order = job_service.job_order(sort)
    filters = job_service.job_filter(
        name=name,
        status=status,
        created_after=created_after,
        created_before=created_before,
        tag=tag,
        search_id=search_id,
    )

    def build(session: Session) -> bytes:
        page = job_store.list_jobs(
            session, tenant=tenant, limit=limit, cursor=cursor, filters=filters, sort=order
        )
        worker_service.annotate(session, page.items, settings)
        return job_page_json(page)

    return Response(await read(request, build), media_type="application/json")


@router.get("/{job_id}", response_model=JobOut)
async def get_job(
    request: Request, tenant: TenantDep, settings: SettingsDep, job_id: JobIdPath
) -> Response:
    """Read, annotated and turned into JSON in one worker-thread hop on a kept connection
    (`deps.read_kept`), from plain rows: the dashboard and clients poll it, and JobDep plus a
    response model would cost three more hops, an ORM session and its objects several times
    the query."""

    def build(conn: Connection) -> bytes:
        job = job_store.job_view(conn, job_id, tenant=tenant)
        worker_service.annotate_view(conn, job, settings)
        return job_json(job)

    return Response(await read_kept(request, build), media_type="application/json")


@router.patch("/{job_id}", response_model=JobOut)
def patch_job(job: JobDep, patch: JobPatch, session: SessionDep) -> Job:
    """Merge tags into the job's, on a job in any state (a null value removes that tag)."""
    return job_store.set_tags(session, job, patch.tags)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={409: {"description": "Queued or running, or a registered model version uses it"}},
)
def delete_job(job: JobDep, session: SessionDep, settings: SettingsDep) -> Response:
    """A finished job, its metrics, stages, checkpoints and files. A model version it trained
    is served from its files: delete that version first."""
    path = job_service.delete(session, job, settings)
    after_commit(session, job_service.remove_dir, path)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{job_id}/resume",
    response_model=SubmittedJobOut,
    responses={409: {"description": "Not failed or cancelled"}, **_QUOTA_DOC},
)
def resume_job(
    job: JobDep,
    session: SessionDep,
    publisher: PublisherDep,
    settings: SettingsDep,
    response: Response,
    body: Annotated[ResumeIn | None, Body()] = None,
) -> Job:
    """Queue a failed or cancelled job again with a fresh attempt budget; it continues from its
    last good checkpoint (a job with none starts over). Published after the commit."""
    job = job_service.resume(
        session, job, max_minutes=body.max_minutes if body else None, settings=settings
    )
    after_commit(session, publisher.publish, job.id, job.queue)
    worker_service.warn_if_unservable(session, job, settings, response)
    return job


@router.post(
    "/{job_id}/clone",
    status_code=status.HTTP_201_CREATED,
    response_model=SubmittedJobOut,
    responses=_QUOTA_DOC,
)
def clone_job(
    job: JobDep,
    session: SessionDep,
    publisher: PublisherDep,
    settings: SettingsDep,
    tenant: TenantDep,
    response: Response,
    overrides: Annotated[
        dict[str, Any] | None,
        Body(
            description="Spec fields to change, as a partial spec merged section by section.",
            examples=[{"name": "digits-mlp-lr", "training": {"lr": 0.01}}],
        ),
    ] = None,
) -> Job:
    """A new job from this job's spec and tags, with `overrides` merged in and checked as
    POST /jobs checks a spec."""
    new = job_service.clone(
        session,
        job,
        overrides,
        tenant=tenant,
        max_attempts=settings.max_attempts,
        settings=settings,
    )
    after_commit(session, publisher.publish, new.id, new.queue)
    response.headers["Location"] = f"/jobs/{new.id}"
    worker_service.warn_if_unservable(session, new, settings, response)
    return new


#: Metric rows one GET /jobs/{id}/metrics answers at most (a long job logs many step rows), and
#: the most points `max_points` may ask of each series (the same bound on the answer's size).
MAX_METRIC_ROWS = 10_000
#: Keys one request may name: each is three aggregates in the downsampling statement.
MAX_METRIC_KEYS = 32


def _metric_keys(keys: list[str] | None) -> list[str] | None:
    """`?keys=a,b&keys=c` as [a, b, c] (repeated, comma-separated or both), each checked."""
    if keys is None:
        return None
    names = list(dict.fromkeys(k.strip() for part in keys for k in part.split(",") if k.strip()))
    bad = [k for k in names if not metric_rollup.KEY_PATTERN.fullmatch(k)]
    if bad:
        raise InvalidInput(
            [
                (
                    ("query", "keys"),
                    f"not a metric key: {bad[0]!r} (letters, digits, _ . -; 64 at most)",
                )
            ]
        )
    if not names or len(names) > MAX_METRIC_KEYS:
        raise InvalidInput(
            [(("query", "keys"), f"name 1 to {MAX_METRIC_KEYS} keys, comma-separated")]
        )
    return names


def _point(p: metric_series.MetricPoint) -> dict[str, object]:
    bucket = {
        "rows": p.rows,
        "first_epoch": p.first_epoch,
        "first_step": p.first_step,
        "min": p.min,
        "max": p.max,
    }
    return {**p.last, "epoch": p.epoch, "step": p.step, "bucket": bucket}


@router.get(
    "/{job_id}/metrics",
    response_model=list[MetricSeriesOut],
    response_model_exclude_unset=True,
    responses={
        200: {
            "headers": {
                "Link": {
                    "description": 'The next page (rel="next"), when there are more rows',
                    "schema": {"type": "string"},
                }
            }
        }
    },
)
def get_metrics(
    job: JobDep,
    session: SessionDep,
    request: Request,
    response: Response,
    kind: Annotated[job_store.MetricKind, Query()] = "epoch",
    limit: Annotated[int, Query(ge=1, le=MAX_METRIC_ROWS)] = MAX_METRIC_ROWS,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    keys: Annotated[
        list[str] | None,
        Query(
            description="Only these metric keys (comma-separated or repeated); a key the job"
            " has no value for is absent from the answer, not an error (a live job's keys"
            " appear as it trains)."
        ),
    ] = None,
    max_points: Annotated[
        int | None,
        Query(
            ge=2,
            le=MAX_METRIC_ROWS,
            description="Downsample on the server: each series (epoch rows, step rows) in at"
            " most this many points, each its bucket's last row with the bucket's min and max;"
            " the first and last rows are always points. Replaces limit/offset paging.",
        ),
    ] = None,
) -> Response | list[dict[str, object]]:
    """A row per epoch (default), per logged step, or both, in training order: at most `limit`
    rows from `offset`; when there are more, a `Link` header (rel="next") names the next page.

    With `max_points` the whole series comes downsampled instead, for a chart: the epoch rows
    and the step rows are separate series; each is split in training order into buckets of
    near-equal row counts (the first row a bucket of its own), and each bucket answers one
    point, its last row's `epoch`, `step` and values, with `bucket` giving its row count, first
    epoch/step, and per key its min and max. A series of at most `max_points` rows comes whole,
    one point per row (`bucket.rows` 1). Done on the server: a long step series is read from
    the rollup the worker writes with its rows (blocks of 2**L rows, each whole in one bucket,
    so counts are equal to within a block), and 100,000 step rows to 1,000 points cost about
    what 1,000 rows do."""
    wanted = _metric_keys(keys)
    if max_points is not None:
        paged = [p for p in ("limit", "offset") if p in request.query_params]
        if paged:
            raise InvalidInput(
                [(("query", paged[0]), "max_points answers the whole series: drop limit/offset")]
            )
        kinds: tuple[metric_series.SeriesKind, ...] = (
            ("epoch", "step") if kind == "all" else (kind,)
        )
        points = [
            p
            for k in kinds
            for p in metric_series.downsample(
                session, job.id, k, max_points=max_points, keys=wanted
            )
        ]
        points.sort(key=lambda p: (p.epoch, -1 if p.step is None else p.step))
        # Serialised straight from the dicts built here (pydantic-core's encoder, 2 ms for
        # 1,000 points): validating them against the response model first, then encoding,
        # cost 25 ms, more than reading the points did. The model still documents them.
        return Response(to_json([_point(p) for p in points]), media_type="application/json")
    rows = job_store.metric_rows(session, job.id, kind, limit=limit + 1, offset=offset)
    if len(rows) > limit:
        rows = rows[:limit]
        also = f"&keys={','.join(wanted)}" if wanted is not None else ""
        response.headers["Link"] = (
            f"</jobs/{job.id}/metrics?kind={kind}&limit={limit}&offset={offset + limit}{also}>;"
            ' rel="next"'
        )
    if wanted is not None:
        return [
            {
                **{k: r.values[k] for k in wanted if k in r.values},
                "epoch": r.epoch,
                "step": None if r.step < 0 else r.step,
            }
            for r in rows
        ]
    return [{**r.values, "epoch": r.epoch, "step": None if r.step < 0 else r.step} for r in rows]


@router.get(
    "/{job_id}/logs",
    response_model=LogPage,
    dependencies=[StrictQuery],
    responses={
        200: {
            "content": {"text/plain": {}},
            "headers": {
                log_service.NEXT_AFTER_HEADER: {
                    "description": "With format=text: the cursor to pass as ?after= next",
                    "schema": {"type": "integer"},
                }
            },
        }
    },
)
def get_logs(
    job: JobDep,
    session: SessionDep,
    after: Annotated[
        int | None,
        Query(ge=0, le=2**31 - 1, description="A line's id: answer the lines written after it."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=log_store.MAX_PAGE)] = log_store.MAX_PAGE,
    format: Annotated[log_service.LogFormat, Query()] = "json",
) -> Any:
    """The job's log, oldest line first: each stage's start and end, warnings, the training's own
    lines (one per epoch), a failure's full traceback, each run's start and how it ended (resumed,
    preempted), every line saying which run (`attempt`) and worker wrote it. At most `limit`
    lines after the cursor `after`; follow a running job by passing the answer's `next_after`
    back as `?after=`, e.g. `curl -H "Authorization: Bearer $KEY" "$TAS/jobs/$ID/logs?after=42"`.
    `format=text` answers plain lines (the cursor in the `X-Next-After` header). A job's log
    keeps at most TAS_JOB_LOG_MAX_LINES lines, the last saying it was truncated."""
    return log_service.job_log(session, job.id, after, limit, format)


@router.get("/{job_id}/checkpoints", response_model=list[CheckpointOut])
def get_checkpoints(job: JobDep, session: SessionDep) -> list[Checkpoint]:
    return job_store.checkpoints(session, job.id)


@router.get(
    "/{job_id}/predictions",
    response_model=PredictionsOut,
    dependencies=[StrictQuery],
    responses={
        200: {
            "content": {"text/csv": {}},
            "headers": {
                "Link": {
                    "description": 'The next page (rel="next"), when there are more rows',
                    "schema": {"type": "string"},
                }
            },
        },
        404: {"description": "No such job, or no predictions for that split"},
        409: {"description": "The job has not succeeded"},
    },
)
def get_predictions(
    job: JobDep,
    settings: SettingsDep,
    split: Annotated[
        Literal["val", "test"] | None,
        Query(description="val | test; default: the split the evaluate stage reported on"),
    ] = None,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
    limit: Annotated[
        int | None,
        Query(
            ge=1,
            le=prediction_service.MAX_PAGE,
            description=f"Rows on the page. JSON: default {prediction_service.DEFAULT_PAGE:,};"
            " CSV: default the whole split (streamed).",
        ),
    ] = None,
    offset: Annotated[
        int, Query(ge=0, le=2**31 - 1, description="The first row (0-based) to answer.")
    ] = 0,
) -> Any:
    """Each held-out sample's index in the dataset (its row before splitting), its true label or
    value and the registered model's prediction: inspect the mistakes, or score your own baseline
    on exactly the same split. Rows come in the split's order.

    JSON comes in pages: at most `limit` rows from `offset`, `count` the split's total; when there
    are more, a `Link` header (rel="next") names the next page. `format=csv` streams the whole
    split (a download to keep, e.g. `curl … > val.csv`) from `offset`, or a page of it with
    `limit`, paged like JSON."""
    return prediction_service.job_predictions(
        job, settings, split, format, limit=limit, offset=offset
    )


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses={409: {"description": "The job has already finished"}},
)
def cancel_job(job: JobDep, session: SessionDep) -> Job:
    """A queued job is cancelled at once; a running one stops at its next step (409 once finished)."""
    job_store.request_cancel(session, job)
    return job

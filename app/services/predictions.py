"""A succeeded job's per-sample predictions on its held-out splits (written by the evaluate stage
from the registered weights), as pages of JSON rows or as CSV.

A split can hold millions of samples, so no answer is built whole: JSON comes in pages (`limit`
rows from `offset`, a `Link` header naming the next page while more remain), and CSV, which a user
downloads to keep, streams the split `CSV_BLOCK` rows at a time. Either way the split's file is
memory-mapped (`tas.core.predictions.open_split`) and only the rows answered are read.

Where they are: the job directory's `predictions/<split>.npz` in the local set-up; with a remote
artifact store, the bundle `<job key>/predictions` (one `<split>.npz` object per split), read
through this machine's cache like a model (`app.services.artifacts`)."""

from __future__ import annotations

from typing import Literal

from fastapi import Response
from fastapi.responses import StreamingResponse
from pydantic_core import to_json

from app.services.artifacts import local_path, store_errors
from tas.core import predictions
from tas.core.objstore import BundleNotFound, open_bundle
from tas.errors import PredictionsNotReady, SplitNotFound
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store.artifacts import Artifacts, open_artifacts
from tas.store.orm import Job, JobStatus

Split = Literal["val", "test"]
Format = Literal["json", "csv"]

#: JSON rows a page holds unless `limit` says otherwise, and the most it may say.
DEFAULT_PAGE = 1_000
MAX_PAGE = 10_000


def _ref(job: Job, settings: Settings, artifacts: Artifacts) -> str:
    """The job's predictions as `app.services.artifacts.local_path` takes them: the directory's
    absolute path locally, the bundle's key in a remote store."""
    if artifacts.remote:
        return f"{job_store.job_key(job.id, tenant=job.tenant)}/{predictions.DIRNAME}"
    job_dir = job_store.job_dir(settings.resolved_artifact_dir, job.id, tenant=job.tenant)
    return str(job_dir / predictions.DIRNAME)


def _file(split: str) -> str:
    return predictions.path_for("", split).name


def available_splits(job: Job, settings: Settings, artifacts: Artifacts | None = None) -> list[str]:
    artifacts = artifacts or open_artifacts(settings)
    ref = _ref(job, settings, artifacts)
    if artifacts.remote:
        with store_errors(ref):
            try:
                names = set(open_bundle(artifacts.store, ref).names())
            except BundleNotFound:  # none written (a job from before they were recorded)
                return []
        return [s for s in predictions.SPLITS if _file(s) in names]
    directory = job_store.job_dir(settings.resolved_artifact_dir, job.id, tenant=job.tenant)
    return [s for s in predictions.SPLITS if predictions.path_for(directory, s).is_file()]


def _next_page(
    job: Job, split: str, fmt: Format, limit: int, offset: int, total: int
) -> str | None:
    """The `Link` header naming the page after rows [offset, offset + limit), or None at the end."""
    if offset + limit >= total:
        return None
    also = "&format=csv" if fmt == "csv" else ""
    return (
        f"</jobs/{job.id}/predictions?split={split}&limit={limit}&offset={offset + limit}{also}>;"
        ' rel="next"'
    )


def job_predictions(
    job: Job,
    settings: Settings,
    split: Split | None,
    fmt: Format,
    *,
    limit: int | None = None,
    offset: int = 0,
    artifacts: Artifacts | None = None,
) -> Response:
    """409 until the job has succeeded; 404 for a split it has no predictions for. Without a
    split: the one the evaluate stage reported on (test when there is one, else val).

    JSON: rows [offset, offset + limit) (`limit` default DEFAULT_PAGE), `count` the split's total.
    CSV: the whole split from `offset`, streamed, unless `limit` asks for a page of it. A page
    with more rows after it carries a `Link: <…>; rel="next"` header; an offset past the end is an
    empty page."""
    artifacts = artifacts or open_artifacts(settings)
    if job.status != JobStatus.succeeded.value:
        raise PredictionsNotReady(job.id, job.status)
    available = available_splits(job, settings, artifacts)
    name: str = split or ""
    if split is None:
        evaluated = ((job.result or {}).get("evaluation") or {}).get("split")
        name = evaluated if evaluated in available else (available[-1] if available else "test")
    if name not in available:
        raise SplitNotFound(job.id, name, available)
    with local_path(settings, artifacts, _ref(job, settings, artifacts)) as directory:
        # Mapped, not read: the arrays stay readable after the block (and a cache eviction) ends,
        # for as long as the answer uses them.
        arrays = predictions.open_split(directory / _file(name))
    total = predictions.count(arrays)
    headers: dict[str, str] = {}
    if fmt == "csv":
        stop = total if limit is None else min(total, offset + limit)
        if limit is not None and (link := _next_page(job, name, fmt, limit, offset, total)):
            headers["Link"] = link
        headers["Content-Disposition"] = f'attachment; filename="{job.id}-{name}-predictions.csv"'
        return StreamingResponse(
            predictions.iter_csv(arrays, offset, stop), media_type="text/csv", headers=headers
        )
    limit = DEFAULT_PAGE if limit is None else limit
    if link := _next_page(job, name, fmt, limit, offset, total):
        headers["Link"] = link
    body = {
        "job_id": job.id,
        "split": name,
        "task": predictions.task(arrays),
        "weights": (job.result or {}).get("weights"),
        "count": total,
        "offset": offset,
        "limit": limit,
        "predictions": predictions.rows(arrays, offset, min(total, offset + limit)),
    }
    # Encoded straight from the rows built here (pydantic-core's encoder): validating up to
    # MAX_PAGE rows against the response model first would cost more than reading them did.
    return Response(to_json(body), media_type="application/json", headers=headers)

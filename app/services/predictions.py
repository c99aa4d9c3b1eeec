"""A succeeded job's per-sample predictions on its held-out splits (written by the evaluate stage
into the job's directory, from the registered weights), as JSON rows or CSV."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Response

from tas.core import predictions
from tas.errors import PredictionsNotReady, SplitNotFound
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store.orm import Job, JobStatus

Split = Literal["val", "test"]
Format = Literal["json", "csv"]


def available_splits(job: Job, settings: Settings) -> list[str]:
    directory = job_store.job_dir(settings.resolved_artifact_dir, job.id, tenant=job.tenant)
    return [s for s in predictions.SPLITS if predictions.path_for(directory, s).is_file()]


def job_predictions(
    job: Job, settings: Settings, split: Split | None, fmt: Format
) -> dict[str, Any] | Response:
    """409 until the job has succeeded; 404 for a split it has no predictions for. Without a
    split: the one the evaluate stage reported on (test when there is one, else val)."""
    if job.status != JobStatus.succeeded.value:
        raise PredictionsNotReady(job.id, job.status)
    available = available_splits(job, settings)
    name: str = split or ""
    if split is None:
        evaluated = ((job.result or {}).get("evaluation") or {}).get("split")
        name = evaluated if evaluated in available else (available[-1] if available else "test")
    if name not in available:
        raise SplitNotFound(job.id, name, available)
    directory = job_store.job_dir(settings.resolved_artifact_dir, job.id, tenant=job.tenant)
    arrays = predictions.read(predictions.path_for(directory, name))
    if fmt == "csv":
        return Response(
            predictions.to_csv(arrays),
            media_type="text/csv",
            headers={
                "Content-Disposition": f'attachment; filename="{job.id}-{name}-predictions.csv"'
            },
        )
    rows = predictions.rows(arrays)
    return {
        "job_id": job.id,
        "split": name,
        "task": "regression" if "value" in arrays else "classification",
        "weights": (job.result or {}).get("weights"),
        "count": len(rows),
        "predictions": rows,
    }

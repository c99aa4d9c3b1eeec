"""A succeeded job's per-sample predictions on its held-out splits (written by the evaluate stage
from the registered weights), as JSON rows or CSV.

Where they are: the job directory's `predictions/<split>.npz` in the local set-up; with a remote
artifact store, the bundle `<job key>/predictions` (one `<split>.npz` object per split), read
through this machine's cache like a model (`app.services.artifacts`)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Response

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


def job_predictions(
    job: Job,
    settings: Settings,
    split: Split | None,
    fmt: Format,
    artifacts: Artifacts | None = None,
) -> dict[str, Any] | Response:
    """409 until the job has succeeded; 404 for a split it has no predictions for. Without a
    split: the one the evaluate stage reported on (test when there is one, else val)."""
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
        arrays = predictions.read(directory / _file(name))
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

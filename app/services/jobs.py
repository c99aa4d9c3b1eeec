"""Job submission: the checks that need more than the spec itself, then the row."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core.data.registry import BUILTIN_DATASETS
from core.spec import JobSpec, spec_problems
from tas import jobstore
from tas.db.models import Job
from tas.errors import InvalidInput


def submit(session: Session, spec: JobSpec, *, tenant: str, max_attempts: int) -> Job:
    """Validate against the dataset's schema and add the job. The caller commits, then publishes."""
    if spec.dataset.id is not None:
        raise InvalidInput(
            [
                (
                    ("body", "dataset", "id"),
                    f"no uploaded dataset {spec.dataset.id!r}; built-ins: "
                    f"{', '.join(sorted(BUILTIN_DATASETS))}",
                )
            ]
        )
    assert spec.dataset.name is not None
    info = BUILTIN_DATASETS[spec.dataset.name].info
    problems = spec_problems(spec, info)
    if problems:
        raise InvalidInput([(("body", *loc), msg) for loc, msg in problems])
    return jobstore.create_job(
        session, spec.model_dump(mode="json"), tenant=tenant, max_attempts=max_attempts
    )

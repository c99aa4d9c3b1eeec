"""Job submission: the checks that need more than the spec itself, then the row."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from core.data.registry import BUILTIN_DATASETS, DatasetInfo
from core.losses import LOSSES
from core.spec import JobSpec, resolved_loss, spec_problems
from tas import jobstore
from tas.datasets import data_source
from tas.db.models import Job
from tas.errors import DatasetNotFound, InvalidInput
from tas.settings import Settings
from tas.sources import InitSourceError, resolve_init_source

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
    from core.transfer import freeze_problems, init_problems

    loss = LOSSES[resolved_loss(spec, info)]
    out_dim = loss.out_dim(info.num_classes, info.target_dim)
    problems: Problems = []
    pinned = None
    if spec.model.init_from is not None:
        try:
            source = resolve_init_source(session, tenant, spec.model.init_from, settings)
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
    """Validate against the dataset's schema and add the job. The caller commits, then publishes.

    What `model.init_from` resolved to is kept in the job's `result.init_from` (the worker trains
    from exactly that, and GET /jobs/{id} shows it)."""
    info = dataset_info(session, spec, tenant, settings)
    problems: Problems = [(("body", *loc), msg) for loc, msg in spec_problems(spec, info)]
    if problems:
        raise InvalidInput(problems)
    problems, pinned = transfer_problems(session, spec, info, tenant, settings)
    if problems:
        raise InvalidInput(problems)
    job = jobstore.create_job(
        session, spec.model_dump(mode="json"), tenant=tenant, max_attempts=max_attempts
    )
    if pinned is not None:
        job.result = {"init_from": pinned}
    return job

"""The model registry: versions registered from finished jobs, aliases, and model references."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tas.core.objstore import ObjectStore, delete_bundle
from tas.errors import (
    AliasNotFound,
    ModelNotFound,
    ModelNotReady,
    ModelVersionNotFound,
)
from tas.store import jobs as job_store
from tas.store.engine import rowcount
from tas.store.orm import (
    AuditEvent,
    Job,
    JobStatus,
    ModelAlias,
    ModelVersion,
    utcnow,
)
from tas.store.unit_of_work import after_commit, insert_or_get

log = logging.getLogger(__name__)

#: Tries at the next version number when jobs of one model finish at the same moment.
VERSION_TRIES = 5


def register_model(
    session: Session, job: Job, model_dir: str, card: dict[str, Any], metrics: dict[str, Any] | None
) -> ModelVersion:
    """The job's model version: the next number of its model name (the existing one when the job
    is registered already). Two jobs of one name finishing at once compute the same number: the
    loser's INSERT fails on the unique (tenant, name, version) key inside a SAVEPOINT and takes
    the next, its transaction (the run's other writes) going on."""
    name = job.spec.get("model_name") or job.name

    def registered() -> ModelVersion | None:
        return session.scalar(select(ModelVersion).where(ModelVersion.job_id == job.id))

    tries = 0
    while True:
        existing = registered()
        if existing is not None:
            return existing
        last = session.scalar(
            select(func.max(ModelVersion.version)).where(
                ModelVersion.tenant == job.tenant, ModelVersion.name == name
            )
        )
        mv = ModelVersion(
            tenant=job.tenant,
            name=name,
            version=(last or 0) + 1,
            job_id=job.id,
            model_dir=model_dir,
            card=card,
            metrics=metrics,
        )
        try:
            return insert_or_get(session, mv, registered)[0]
        except IntegrityError:  # the number went to another job: take the next one
            tries += 1
            if tries == VERSION_TRIES:
                raise


# The model registry: versions and aliases (`name@alias` → a version). Moving an alias is the
# deploy step; the serving cache is told once the request's unit of work has committed (it
# re-resolves and warms the model).


def model_versions(
    session: Session,
    name: str,
    *,
    tenant: str,
    before: int | None = None,
    limit: int | None = None,
) -> list[ModelVersion]:
    """A model's versions, newest first: those below `before`, at most `limit` of them (a page);
    ModelNotFound when the model has no version at all."""
    q = select(ModelVersion).where(ModelVersion.tenant == tenant, ModelVersion.name == name)
    if before is not None:
        q = q.where(ModelVersion.version < before)
    q = q.order_by(ModelVersion.version.desc())
    if limit is not None:
        q = q.limit(limit)
    versions = list(session.scalars(q))
    if not versions and (before is None or latest_version(session, name, tenant=tenant) is None):
        raise ModelNotFound(name)
    return versions


def latest_version(session: Session, name: str, *, tenant: str) -> int | None:
    return session.scalar(
        select(func.max(ModelVersion.version)).where(
            ModelVersion.tenant == tenant, ModelVersion.name == name
        )
    )


def versions_by_name(
    session: Session,
    *,
    tenant: str,
    after: str | None = None,
    limit: int | None = None,
    per_name: int | None = None,
) -> dict[str, list[ModelVersion]]:
    """The tenant's models in name order, each with its versions, newest first: the models named
    after `after`, at most `limit` of them (a page), and at most `per_name` versions of each (its
    newest), so one answer stays bounded however many versions a model has."""
    names = (select(ModelVersion.name).where(ModelVersion.tenant == tenant).distinct()).order_by(
        ModelVersion.name
    )
    if after is not None:
        names = names.where(ModelVersion.name > after)
    if limit is not None:
        names = names.limit(limit)
    wanted = (ModelVersion.tenant == tenant, ModelVersion.name.in_(names.scalar_subquery()))
    q = select(ModelVersion).where(*wanted)
    if per_name is not None:
        ranked = (
            select(
                ModelVersion.id,
                func.row_number()
                .over(partition_by=ModelVersion.name, order_by=ModelVersion.version.desc())
                .label("rank"),
            )
            .where(*wanted)
            .subquery()
        )
        q = q.join(ranked, ranked.c.id == ModelVersion.id).where(ranked.c.rank <= per_name)
    by_name: dict[str, list[ModelVersion]] = {}
    for mv in session.scalars(q.order_by(ModelVersion.name, ModelVersion.version.desc())):
        by_name.setdefault(mv.name, []).append(mv)
    return by_name


def model_aliases(
    session: Session,
    *,
    tenant: str,
    name: str | None = None,
    names: Sequence[str] | None = None,
) -> list[ModelAlias]:
    """The tenant's aliases (of the model `name`, or of the models `names`)."""
    q = select(ModelAlias).where(ModelAlias.tenant == tenant)
    if name is not None:
        q = q.where(ModelAlias.name == name)
    if names is not None:
        q = q.where(ModelAlias.name.in_(list(names)))
    return list(session.scalars(q.order_by(ModelAlias.name, ModelAlias.alias)))


def get_version(session: Session, name: str, version: int, *, tenant: str) -> ModelVersion:
    mv = session.scalar(
        select(ModelVersion).where(
            ModelVersion.tenant == tenant,
            ModelVersion.name == name,
            ModelVersion.version == version,
        )
    )
    if mv is None:
        model_versions(session, name, tenant=tenant, limit=1)  # an unknown model says so
        raise ModelVersionNotFound(name, version)
    return mv


def set_alias(
    session: Session, name: str, alias: str, version: int, *, tenant: str
) -> tuple[ModelAlias, ModelVersion]:
    """Point `name@alias` at `version` (created or moved); the version must exist. Two requests
    creating the same alias at once: the loser's INSERT fails on the unique (tenant, name, alias)
    key inside a SAVEPOINT, and it moves the winner's alias instead, as a later request would."""
    mv = get_version(session, name, version, tenant=tenant)

    def current() -> ModelAlias | None:
        return session.scalar(
            select(ModelAlias).where(
                ModelAlias.tenant == tenant, ModelAlias.name == name, ModelAlias.alias == alias
            )
        )

    existing = current()
    if existing is None:
        new = ModelAlias(tenant=tenant, name=name, alias=alias, version=version)
        row, created = insert_or_get(session, new, current)
    else:
        row, created = existing, False
    if not created:
        row.version = version
        row.updated_at = utcnow()
    session.flush()
    return row, mv


def delete_alias(session: Session, name: str, alias: str, *, tenant: str) -> int:
    """Remove `name@alias`; the version it pointed at (for the alias's history)."""
    where = (ModelAlias.tenant == tenant, ModelAlias.name == name, ModelAlias.alias == alias)
    version = session.scalar(select(ModelAlias.version).where(*where))
    result = session.execute(delete(ModelAlias).where(*where))
    if version is None or rowcount(result) == 0:
        raise AliasNotFound(name, alias)
    return version


def alias_events(
    session: Session,
    name: str,
    *,
    tenant: str,
    actions: Sequence[str],
    limit: int,
    before: int | None = None,
) -> list[AuditEvent]:
    """The model's alias changes, newest first: the audit log's rows (with an id below `before`)
    of the `actions` that set or remove its aliases (their target is `name/...`). The audit log
    records every write in the write's own transaction, so an alias's history needs no table of
    its own."""
    q = select(AuditEvent).where(
        AuditEvent.tenant == tenant,
        AuditEvent.action.in_(list(actions)),
        AuditEvent.target.startswith(f"{name}/", autoescape=True),
    )
    if before is not None:
        q = q.where(AuditEvent.id < before)
    return list(session.scalars(q.order_by(AuditEvent.id.desc()).limit(limit)))


def owned_bundle(mv: ModelVersion) -> str | None:
    """The key of the model bundle a version owns in the artifact store, if it is kept there:
    with a remote store the registry names the bundle's key (relative), in the local set-up the
    job directory's absolute path, which stays with its job as before."""
    return None if Path(mv.model_dir).is_absolute() else mv.model_dir


def _delete_objects(store: ObjectStore, key: str) -> None:
    """Best effort, after the commit: the row is gone either way, so a store that fails is logged,
    never a failed request; what stays is only space (the job's own deletion removes its whole
    prefix, this bundle included)."""
    try:
        delete_bundle(store, key)
    except Exception:
        log.exception("could not delete the model bundle %s", store.describe(key))


def delete_version(
    session: Session,
    name: str,
    version: int,
    *,
    tenant: str,
    store: ObjectStore | None = None,
) -> ModelVersion:
    """Drop a version and the aliases that point at it; the caller evicts it from the serving
    cache. Given the artifact store, a version kept there as its own bundle (`owned_bundle`)
    takes its objects along, deleted once the unit of work has committed: a rollback must leave
    the row its model, and an object store has nothing to roll back (a deletion that fails after
    the commit leaves unreachable objects, logged, never a row without its model). In the local
    set-up the model directory stays with its job (the job's own deletion removes it)."""
    mv = get_version(session, name, version, tenant=tenant)
    key = owned_bundle(mv)
    if store is not None and key is not None:
        after_commit(session, _delete_objects, store, key)
    session.execute(
        delete(ModelAlias).where(
            ModelAlias.tenant == tenant, ModelAlias.name == name, ModelAlias.version == version
        )
    )
    session.delete(mv)
    session.flush()
    return mv


JOB_ID = re.compile(r"^[0-9a-f]{32}$")

#: The largest version a reference can name: versions are a 64-bit integer column, and a larger
#: number in a query is an overflow in the driver, not a version that does not exist.
MAX_VERSION = 2**63 - 1


def version_problem(ref: str) -> str | None:
    """What is wrong with the `:version` part of a `name:version` reference, if anything that no
    registry could hold (a number beyond MAX_VERSION)."""
    if "@" in ref or ":" not in ref:
        return None
    version = ref.partition(":")[2]
    if version.isdigit() and int(version) > MAX_VERSION:
        return f"a model version is at most {MAX_VERSION}; {ref!r} names {version}"
    return None


def resolve_model(session: Session, ref: str, *, tenant: str) -> ModelVersion:
    """A job id, `name` (latest version), `name:version` or `name@alias`: how /predict and
    `model.init_from` name a model. ModelNotFound, or ModelNotReady for an unfinished job."""
    if JOB_ID.match(ref):
        job = job_store.find_job(session, ref, tenant=tenant)
        if job is None:
            raise ModelNotFound(ref)
        if job.status != JobStatus.succeeded.value:
            raise ModelNotReady(ref, job.status)
        mv = session.scalar(select(ModelVersion).where(ModelVersion.job_id == ref))
        if mv is None:
            raise ModelNotFound(ref)
        return mv
    if "@" in ref:
        name, _, alias = ref.partition("@")
        version_no = session.scalar(
            select(ModelAlias.version).where(
                ModelAlias.tenant == tenant, ModelAlias.name == name, ModelAlias.alias == alias
            )
        )
        if version_no is None:
            raise ModelNotFound(ref)
        version = str(version_no)
    else:
        name, _, version = ref.partition(":")
    q = select(ModelVersion).where(ModelVersion.tenant == tenant, ModelVersion.name == name)
    if version:
        if not version.isdigit() or int(version) > MAX_VERSION:
            raise ModelNotFound(ref)
        q = q.where(ModelVersion.version == int(version))
    mv = session.scalar(q.order_by(ModelVersion.version.desc()).limit(1))
    if mv is None:
        raise ModelNotFound(ref)
    return mv

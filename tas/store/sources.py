"""What `model.init_from` names, resolved to a safetensors file: shared by the API (checked before
a job is queued) and the worker (read again when the job runs).

A reference is a succeeded job's id, a registered model `name` (its latest version),
`name:version`, `name@alias`, or `weights:<id>` (an upload to POST /weights). The API pins what it
resolved to (`InitSource.pinned`: the model version's job, or the weights' hash) so that the job
trains from what was checked even if `name` gets a newer version meanwhile; the worker resolves
the pin, and a version deleted in between fails the job in `collect`, saying so.

With an artifact store the file is this machine's cached copy, which another process's eviction
may delete once nothing holds it. A caller that reads the file passes `hold` (an ExitStack it
keeps open for as long as it reads: the API for its check, the worker for the whole run), and
the cache entry is held from eviction on it until the stack closes; without `hold` the path is
only good for seeing that the source exists (an entry is evicted only when not held, so a file
already opened stays readable)."""

from __future__ import annotations

from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tas.core.objstore import ObjectStoreError, open_bundle
from tas.errors import DomainError, ModelNotFound, ModelNotReady
from tas.settings import Settings
from tas.store import files as file_store
from tas.store import jobs as job_store
from tas.store import registry as registry_store
from tas.store import weights as weights_store
from tas.store.artifacts import open_artifacts
from tas.store.orm import ModelVersion

WEIGHTS_FILE = "model.safetensors"
FORMS = (
    "give a succeeded job's id, a model name, name:version, name@alias, or weights:<id>"
    " (an upload to POST /weights)"
)


class InitSourceError(DomainError):
    """`model.init_from` names nothing usable; the message says what was tried."""

    status_code = 422


@dataclass(frozen=True)
class InitSource:
    path: Path
    #: JSON: what the reference resolved to (kept with the job, read again by the worker).
    pinned: dict[str, Any]


def resolve_init_source(
    session: Session, tenant: str, ref: str, settings: Settings, *, hold: ExitStack | None = None
) -> InitSource:
    """What `ref` names; its file held on `hold` (see the module docstring)."""
    ref = ref.strip()
    if ref.startswith("weights:"):
        return _weights(session, tenant, ref, ref.partition(":")[2], settings, hold)
    return _model(_registered(session, tenant, ref), ref, settings, hold)


def resolve_pinned(
    session: Session,
    tenant: str,
    pinned: dict[str, Any],
    settings: Settings,
    *,
    hold: ExitStack | None = None,
) -> Path:
    """The file a pin names, as the job runs (InitSourceError when it is gone), held on `hold`."""
    ref = str(pinned.get("ref", ""))
    if pinned.get("kind") == "weights":
        return _weights(session, tenant, ref, str(pinned.get("id", "")), settings, hold).path
    mv = session.scalar(
        select(ModelVersion).where(
            ModelVersion.job_id == str(pinned.get("job_id", "")), ModelVersion.tenant == tenant
        )
    )
    if mv is None:
        raise InitSourceError(
            f"init_from {ref!r} resolved to model {pinned.get('name')}:{pinned.get('version')}"
            " when the job was submitted, and that version has been deleted since"
        )
    return _model(mv, ref, settings, hold).path


def held(entry: AbstractContextManager[Path], hold: ExitStack | None) -> Path:
    """The path a cache context manager yields, held on `hold` until it closes; without `hold`,
    released at once (the path is then only good for seeing that it exists)."""
    if hold is not None:
        return hold.enter_context(entry)
    with entry as path:
        return path


def _weights(
    session: Session,
    tenant: str,
    ref: str,
    weights_id: str,
    settings: Settings,
    hold: ExitStack | None,
) -> InitSource:
    row = weights_store.find_weights(session, weights_id, tenant=tenant)
    if row is None:
        raise InitSourceError(
            f"init_from {ref!r}: no uploaded weights with id {weights_id!r} (an id is the 16 hex"
            " characters POST /weights answered)"
        )
    try:
        path = weights_store.weights_file(settings, row, hold=hold)
    except file_store.StoredFileMissing:
        raise InitSourceError(
            f"init_from {ref!r}: the weights file is missing from the store; upload it again"
        ) from None
    return InitSource(
        path, {"ref": ref, "kind": "weights", "id": row.public_id, "sha256": row.sha256}
    )


def _registered(session: Session, tenant: str, ref: str) -> ModelVersion:
    """The model version `ref` names, resolved as /predict resolves it; what went wrong, in terms
    of init_from, when it names none."""
    try:
        return registry_store.resolve_model(session, ref, tenant=tenant)
    except ModelNotReady:
        job = job_store.find_job(session, ref, tenant=tenant)
        status = job.status if job is not None else "unfinished"
        raise InitSourceError(
            f"init_from {ref!r}: that job is {status}; only a succeeded job has weights to start"
            " from"
        ) from None
    except ModelNotFound:
        raise InitSourceError(_not_found(session, tenant, ref)) from None


def _not_found(session: Session, tenant: str, ref: str) -> str:
    if registry_store.JOB_ID.match(ref):
        job = job_store.find_job(session, ref, tenant=tenant)
        if job is not None:
            return (
                f"init_from {ref!r}: that job's model is no longer registered (its version was"
                " deleted)"
            )
    name = ref.partition("@")[0].partition(":")[0]
    versions = session.scalars(
        select(ModelVersion.version)
        .where(ModelVersion.tenant == tenant, ModelVersion.name == name)
        .order_by(ModelVersion.version.desc())
        .limit(20)
    ).all()
    if not versions:
        tried = "no job or model" if registry_store.JOB_ID.match(ref) else "no model"
        return f"init_from {ref!r}: {tried} named {name!r}; {FORMS}"
    if "@" in ref:
        return f"init_from {ref!r}: model {name!r} has no alias {ref.partition('@')[2]!r}"
    have = ", ".join(str(v) for v in versions)
    return (
        f"init_from {ref!r}: model {name!r} has no version {ref.partition(':')[2]!r}; its"
        f" versions: {have}"
    )


def model_weights(
    settings: Settings, model_dir: str, *, hold: ExitStack | None = None
) -> Path | None:
    """A local path to a model version's weights file, or None when it is missing. `model_dir` is
    an absolute directory in the local set-up (read in place, contained in the artifact
    directory) or, with an artifact store, the key of the model's bundle: its weights object is
    fetched into this machine's cache, verified against the bundle's manifest, and held from
    eviction on `hold` until it closes (without `hold`, not held: see the module docstring)."""
    if Path(model_dir).is_absolute():
        root = settings.resolved_artifact_dir
        path = (Path(model_dir) / WEIGHTS_FILE).resolve()
        return path if path.is_relative_to(root) and path.is_file() else None
    artifacts = open_artifacts(settings)
    try:
        bundle = open_bundle(artifacts.store, model_dir)
        if WEIGHTS_FILE not in bundle.names():
            return None
        return held(artifacts.cache.object(bundle, WEIGHTS_FILE), hold)
    except (ObjectStoreError, FileNotFoundError, ValueError):
        return None


def _model(mv: ModelVersion, ref: str, settings: Settings, hold: ExitStack | None) -> InitSource:
    path = model_weights(settings, mv.model_dir, hold=hold)
    if path is None:
        raise InitSourceError(
            f"init_from {ref!r}: the weights of model {mv.name}:{mv.version} are missing from"
            " the artifact store"
        )
    return InitSource(
        path,
        {
            "ref": ref,
            "kind": "model",
            "name": mv.name,
            "version": mv.version,
            "job_id": mv.job_id,
        },
    )

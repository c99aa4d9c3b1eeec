"""Uploaded datasets: the rows that make a stored file a tenant's, and how a job's data spec finds its file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tas.core.errors import DataError
from tas.errors import DatasetInUse, DatasetNotFound
from tas.settings import Settings
from tas.store import files as file_store
from tas.store import pagination
from tas.store.artifacts import open_artifacts
from tas.store.orm import Dataset, Job, JobStatus
from tas.store.unit_of_work import insert_or_get

if TYPE_CHECKING:
    from tas.core.data.dataset import DatasetInfo, LoadContext, Loaded
    from tas.core.spec import DatasetSpec


# ---------------------------------------------------------------------------------------------
# Datasets.


def dataset_path(settings: Settings, row: Dataset) -> Path:
    """The stored file of an upload in the local set-up (inside the uploads directory, or
    DatasetNotFound). With an artifact store the bytes are an object (`file_store.fetch`)."""
    try:
        return file_store.contained(settings.resolved_uploads_dir, row.path)
    except ValueError as exc:
        raise DatasetNotFound(row.id) from exc


def get_dataset(session: Session, dataset_id: str, *, tenant: str) -> Dataset:
    row = session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant == tenant))
    if row is None:
        raise DatasetNotFound(dataset_id)
    return row


@dataclass(frozen=True)
class DataSource:
    """What a job's `dataset` names: its schema (what the spec is checked against), its loader,
    its identity for the preprocess cache, and, for an upload in the local set-up, the stored
    file (None with an artifact store: the loader fetches the object into this machine's cache,
    and a missing one fails the load as a DataError saying so)."""

    info: DatasetInfo
    load: Callable[[LoadContext], Loaded]
    fingerprint: str
    path: Path | None = None


def data_source(
    session: Session, dataset: DatasetSpec, *, tenant: str, settings: Settings
) -> DataSource:
    """A built-in's source, or the tenant's upload's, read back from its stored schema (no file is
    read here); DatasetNotFound for an unknown upload. Shared by the API (submit) and the worker.
    An upload whose file cannot be read when the job loads it fails as `unreadable` says."""
    from tas.core.data.formats.upload import info_from_schema, load_upload
    from tas.core.data.registry import BUILTIN_DATASETS

    if dataset.name is not None:
        builtin = BUILTIN_DATASETS[dataset.name]
        return DataSource(builtin.info, builtin.load, f"builtin:{dataset.name}")
    assert dataset.id is not None
    row = get_dataset(session, dataset.id, tenant=tenant)
    schema = dict(row.schema)
    limits = file_store.upload_limits(settings)
    info = info_from_schema(row.name, schema)
    fingerprint = f"upload:{row.fingerprint}"
    name, dataset_id, row_path = row.name, row.id, row.path
    # The client's file name (the stored file's last part): it helps tell the format, as it did
    # at upload, whatever this machine's copy is called.
    filename = PurePosixPath(row.path).name
    if not open_artifacts(settings).remote:
        path = dataset_path(settings, row)

        def load(ctx: LoadContext) -> Loaded:
            try:
                return load_upload(path, filename, schema, limits)
            except (OSError, DataError) as exc:
                raise unreadable(name, dataset_id, exc, hide=(str(path), row_path)) from exc

        return DataSource(info, load, fingerprint, path)
    relative, size, sha256 = row.path, row.size_bytes, row.sha256

    def fetch_and_load(ctx: LoadContext) -> Loaded:
        # Read on the machine that runs the job, only on a preprocessing-cache miss; held in the
        # object cache while it is decoded. This machine's cache failing otherwise (its disk) is
        # not the upload's fault: it stays the server's error.
        try:
            with file_store.fetch(settings, relative, size=size, sha256=sha256) as local:
                try:
                    return load_upload(local, filename, schema, limits)
                except (OSError, DataError) as exc:
                    raise unreadable(name, dataset_id, exc, hide=(str(local), row_path)) from exc
        except file_store.StoredFileMissing as exc:
            raise unreadable(name, dataset_id, exc) from exc

    return DataSource(info, fetch_and_load, fingerprint)


def unreadable(
    name: str,
    dataset_id: str,
    why: BaseException | str,
    *,
    hide: tuple[str, ...] = (),
    **kw: Any,
) -> DataError:
    """A job's error for an upload it cannot read, as its submitter knows the upload: by its name
    and id, never by where its file is stored (the tenant's prefix, the sha256, the server's
    directories, which an OSError's text or a store key would show). An OSError gives its
    strerror only; a DataError (an UploadError) or StoredFileMissing their own text, with any of
    `hide` (the file's paths) in it said as "the file"; a str is the reason itself. Raise it
    `from` the exception: the worker's log keeps the whole of it. `kw` goes to DataError (type,
    stage)."""
    if isinstance(why, OSError):
        reason = why.strerror or type(why).__name__
        reason = reason[:1].lower() + reason[1:]
    elif isinstance(why, file_store.StoredFileMissing):
        reason = why.reason
    elif isinstance(why, DataError):
        reason = why.message
    elif isinstance(why, str):
        reason = why
    else:
        reason = type(why).__name__
    for text in sorted(filter(None, hide), key=len, reverse=True):
        reason = reason.replace(text, "the file")
    return DataError(
        f"uploaded dataset {name!r} (id {dataset_id}) cannot be read: {reason}; upload it again",
        hint="upload the data again (POST /datasets) and submit the job with the new id",
        **kw,
    )


def add_dataset(
    session: Session,
    settings: Settings,
    *,
    tenant: str,
    name: str,
    file_name: str,
    spool: file_store.Spool,
    schema: dict[str, Any],
) -> tuple[Dataset, bool]:
    """The tenant's dataset for these bytes read with these options: the existing one (False) or
    a new row whose file is now in place (True). The spool must be finished. The caller's unit of
    work commits.

    Two identical uploads racing: the loser's INSERT fails on the unique (tenant, fingerprint)
    key inside a SAVEPOINT, and the winner's row is returned; the loser's transaction goes on."""
    fp = file_store.fingerprint(spool.sha256, schema.get("options") or {})
    existing = _by_fingerprint(session, tenant, fp)
    if existing is not None:
        _heal(settings, existing, spool)
        return existing, False
    # Under the tenant's prefix: the same bytes from two tenants are two files (see files.py).
    relative = f"{file_store.tenant_prefix(tenant)}datasets/{spool.sha256}/{file_name}"
    row = Dataset(
        tenant=tenant,
        name=name,
        format=str(schema.get("format") or "unknown"),
        sha256=spool.sha256,
        fingerprint=fp,
        size_bytes=spool.size,
        path=relative,
        schema=schema,
    )
    row, created = insert_or_get(session, row, lambda: _by_fingerprint(session, tenant, fp))
    if not created:
        _heal(settings, row, spool)
        return row, False
    file_store.store_upload(settings, spool, relative)
    return row, True


def _by_fingerprint(session: Session, tenant: str, fp: str) -> Dataset | None:
    return session.scalar(
        select(Dataset).where(Dataset.tenant == tenant, Dataset.fingerprint == fp)
    )


def _heal(settings: Settings, row: Dataset, spool: file_store.Spool) -> None:
    """A repeated upload puts the file back if it went missing (it has the same bytes)."""
    if not open_artifacts(settings).remote:
        dest = dataset_path(settings, row)
        if not dest.exists():
            file_store.place(spool.path, dest)
    elif not file_store.upload_present(settings, row.path):
        file_store.store_upload(settings, spool, row.path)


def list_datasets(
    session: Session, *, tenant: str, limit: int, cursor: str | None
) -> pagination.Page[Dataset]:
    """The tenant's uploads, newest first, by (created_at, id) so pages never skip or repeat."""
    return pagination.paginate(
        session,
        select(Dataset).where(Dataset.tenant == tenant),
        created_col=Dataset.created_at,
        id_col=Dataset.id,
        limit=limit,
        cursor=cursor,
    )


def jobs_using(session: Session, row: Dataset) -> list[str]:
    """Queued or running jobs of the dataset's tenant that train on it."""
    jobs = session.execute(
        select(Job.id, Job.spec).where(
            Job.tenant == row.tenant,
            Job.status.in_([JobStatus.queued.value, JobStatus.running.value]),
        )
    )
    return [job_id for job_id, spec in jobs if (spec.get("dataset") or {}).get("id") == row.id]


def delete_dataset(session: Session, settings: Settings, row: Dataset) -> Path | None:
    """Drop the row (409 while a queued or running job uses it). Returns the file to remove once
    the caller has committed — None while another row uses it (the same bytes read with other
    options; or, for a file stored before tenants had their own prefix, another tenant's row)."""
    using = jobs_using(session, row)
    if using:
        raise DatasetInUse(row.id, using)
    path = dataset_path(settings, row)
    session.execute(delete(Dataset).where(Dataset.id == row.id))
    others = session.scalar(select(Dataset.id).where(Dataset.path == row.path).limit(1))
    return None if others is not None else path

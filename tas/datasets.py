"""Uploaded datasets and weights files: how their bytes are received and stored, and the rows that
make them a tenant's. Shared by the API (uploads) and the worker (reading them back); no HTTP here.

Layout under the uploads directory (`TAS_UPLOADS_DIR`, default `artifact_dir/uploads`, so workers
on other machines read them from the shared artifact store):

    .tmp/upload-*.part                 files being received (removed on every error path)
    datasets/<sha256>/<file name>      an uploaded dataset, stored once per content hash
    weights/<sha256>.safetensors       an uploaded weights file

Files land by `os.replace` from `.tmp` (same filesystem: atomic), so two identical uploads racing
each other write the same bytes to the same name and neither can see a half-written file. Paths
in the database are relative to the uploads directory and every read checks containment."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tas import jobstore
from tas.db.models import Dataset, Job, JobStatus, WeightsFile
from tas.errors import DatasetInUse, DatasetNotFound, InvalidUpload
from tas.settings import Settings

if TYPE_CHECKING:
    from core.data.registry import DatasetInfo, LoadContext, Loaded
    from core.data.uploads import UploadLimits
    from core.spec import DatasetSpec

#: How much of a file is held in memory before it is written out.
WRITE_CHUNK = 1 << 20
WEIGHTS_ID = re.compile(r"^[0-9a-f]{16}$")


# ---------------------------------------------------------------------------------------------
# Receiving: a temp file, hashed and counted as it is written.


class Spool:
    """A file being received into `<uploads>/.tmp`: hashed (sha256) and counted as it is written,
    refused (413, naming `field`) the moment it passes `max_bytes`. Blocking writes: call `write`
    from a worker thread. Use as a context manager, or call `discard` on every error path."""

    def __init__(self, tmp_dir: Path, max_bytes: int, *, field: str = "file") -> None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-", suffix=".part")
        self.path = Path(name)
        self._fh = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.max_bytes = max_bytes
        self.field = field

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise too_large(self.field, self.max_bytes)
        self._hash.update(data)
        self._fh.write(data)

    def finish(self) -> str:
        """Close the file (flushed and synced: it is about to be renamed into place); the sha256."""
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        return self._hash.hexdigest()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def discard(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()  # a no-op for the name once the file was moved into place


def too_large(field: str, max_bytes: int) -> InvalidUpload:
    return InvalidUpload(
        [
            (
                ("body", field),
                f"the upload is over the limit of {max_bytes / 2**20:g} MiB (TAS_MAX_UPLOAD_MB);"
                " send a smaller file or raise the limit",
            )
        ],
        413,
    )


def tmp_dir(settings: Settings) -> Path:
    return settings.resolved_uploads_dir / ".tmp"


def safe_file_name(filename: str | None, default: str = "upload") -> str:
    """The last path component of a client's file name, reduced to `[A-Za-z0-9._-]`, no leading
    dot, at most 100 characters (the extension kept): a name the server can store it under."""
    base = PureWindowsPath(PurePosixPath(filename or "").name).name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip("._")
    if not cleaned:
        return default
    if len(cleaned) > 100:
        stem, dot, ext = cleaned.rpartition(".")
        cleaned = stem[: 99 - len(ext)] + dot + ext if dot and len(ext) < 20 else cleaned[:100]
    return cleaned


def upload_limits(settings: Settings) -> UploadLimits:
    from core.data.uploads import UploadLimits

    return UploadLimits(
        max_entries=settings.upload_max_entries,
        max_uncompressed_bytes=settings.upload_max_uncompressed_mb * 2**20,
        max_ratio=settings.upload_max_ratio,
        max_pixels=settings.upload_max_pixels,
        max_samples=settings.upload_max_samples,
    )


def fingerprint(sha256: str, options: dict[str, Any]) -> str:
    """The dataset's identity: its bytes and how they were read (target, task, size, format)."""
    blob = json.dumps(options, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{sha256}\n{blob}".encode()).hexdigest()


def _contained(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{relative!r} lies outside {root}")
    return path


def _place(tmp: Path, dest: Path) -> None:
    """Move a received file into its content-addressed place (atomic; identical bytes win either
    way). When the file is already there, the temp file is dropped."""
    if dest.exists():
        tmp.unlink(missing_ok=True)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)


# ---------------------------------------------------------------------------------------------
# Datasets.


def dataset_path(settings: Settings, row: Dataset) -> Path:
    """The stored file of an upload (inside the uploads directory, or DatasetNotFound)."""
    try:
        return _contained(settings.resolved_uploads_dir, row.path)
    except ValueError as exc:
        raise DatasetNotFound(row.id) from exc


def get_dataset(session: Session, dataset_id: str, *, tenant: str) -> Dataset:
    row = session.get(Dataset, dataset_id)
    if row is None or row.tenant != tenant:
        raise DatasetNotFound(dataset_id)
    return row


@dataclass(frozen=True)
class DataSource:
    """What a job's `dataset` names: its schema (what the spec is checked against), its loader,
    its identity for the preprocess cache, and, for an upload, the stored file."""

    info: DatasetInfo
    load: Callable[[LoadContext], Loaded]
    fingerprint: str
    path: Path | None = None


def data_source(
    session: Session, dataset: DatasetSpec, *, tenant: str, settings: Settings
) -> DataSource:
    """A built-in's source, or the tenant's upload's, read back from its stored schema (no file is
    read here); DatasetNotFound for an unknown upload. Shared by the API (submit) and the worker."""
    from core.data.registry import BUILTIN_DATASETS
    from core.data.uploads import info_from_schema, load_upload

    if dataset.name is not None:
        builtin = BUILTIN_DATASETS[dataset.name]
        return DataSource(builtin.info, builtin.load, f"builtin:{dataset.name}")
    assert dataset.id is not None
    row = get_dataset(session, dataset.id, tenant=tenant)
    path = dataset_path(settings, row)
    schema = dict(row.schema)
    limits = upload_limits(settings)

    def load(ctx: LoadContext) -> Loaded:
        return load_upload(path, path.name, schema, limits)

    return DataSource(info_from_schema(row.name, schema), load, f"upload:{row.fingerprint}", path)


def add_dataset(
    session: Session,
    settings: Settings,
    *,
    tenant: str,
    name: str,
    file_name: str,
    spool: Spool,
    schema: dict[str, Any],
) -> tuple[Dataset, bool]:
    """The tenant's dataset for these bytes read with these options: the existing one (False) or
    a new row whose file is now in place (True). The spool must be finished. The caller commits.

    Two identical uploads racing: the loser's INSERT fails on the unique (tenant, fingerprint)
    key; its transaction is rolled back and the winner's row returned."""
    fp = fingerprint(spool.sha256, schema.get("options") or {})
    existing = _by_fingerprint(session, tenant, fp)
    if existing is not None:
        _heal(settings, existing, spool)
        return existing, False
    relative = f"datasets/{spool.sha256}/{file_name}"
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
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        existing = _by_fingerprint(session, tenant, fp)
        if existing is None:  # pragma: no cover - the conflicting row was deleted meanwhile
            raise
        _heal(settings, existing, spool)
        return existing, False
    _place(spool.path, _contained(settings.resolved_uploads_dir, relative))
    return row, True


def _by_fingerprint(session: Session, tenant: str, fp: str) -> Dataset | None:
    return session.scalar(
        select(Dataset).where(Dataset.tenant == tenant, Dataset.fingerprint == fp)
    )


def _heal(settings: Settings, row: Dataset, spool: Spool) -> None:
    """A repeated upload puts the file back if it went missing (it has the same bytes)."""
    dest = dataset_path(settings, row)
    if not dest.exists():
        _place(spool.path, dest)


@dataclass
class DatasetPage:
    items: list[Dataset]
    next_cursor: str | None


def list_datasets(session: Session, *, tenant: str, limit: int, cursor: str | None) -> DatasetPage:
    """The tenant's uploads, newest first, by (created_at, id) so pages never skip or repeat."""
    q = select(Dataset).where(Dataset.tenant == tenant)
    if cursor is not None:
        created, row_id = jobstore.decode_cursor(cursor)
        q = q.where(
            or_(
                Dataset.created_at < created,
                and_(Dataset.created_at == created, Dataset.id < row_id),
            )
        )
    rows = list(
        session.scalars(q.order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit + 1))
    )
    items = rows[:limit]
    return DatasetPage(
        items,
        jobstore.encode_cursor(items[-1].created_at, items[-1].id)
        if len(rows) > limit and items
        else None,
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
    the caller has committed — None while another row (another tenant, other options) uses it."""
    using = jobs_using(session, row)
    if using:
        raise DatasetInUse(row.id, using)
    path = dataset_path(settings, row)
    session.execute(delete(Dataset).where(Dataset.id == row.id))
    others = session.scalar(select(Dataset.id).where(Dataset.path == row.path).limit(1))
    return None if others is not None else path


def remove_file(path: Path) -> None:
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # the <sha256> directory, once empty


# ---------------------------------------------------------------------------------------------
# Weights files (`model.init_from: "weights:<id>"`), the id being the sha256's first 16 hex.


def weights_path(settings: Settings, sha256: str) -> Path:
    return settings.resolved_uploads_dir / "weights" / f"{sha256}.safetensors"


def find_weights(session: Session, weights_id: str, *, tenant: str) -> WeightsFile | None:
    if not WEIGHTS_ID.match(weights_id):
        return None
    return session.scalar(
        select(WeightsFile)
        .where(WeightsFile.tenant == tenant, WeightsFile.sha256.startswith(weights_id))
        .limit(1)
    )


def add_weights(
    session: Session,
    settings: Settings,
    *,
    tenant: str,
    name: str,
    spool: Spool,
    tensors: Mapping[str, Sequence[int]],
) -> tuple[WeightsFile, bool]:
    """As `add_dataset`, for a checked safetensors file. The caller commits."""
    dest = weights_path(settings, spool.sha256)
    existing = _weights_by_sha(session, tenant, spool.sha256)
    if existing is None:
        row = WeightsFile(
            tenant=tenant,
            sha256=spool.sha256,
            name=name,
            size_bytes=spool.size,
            tensors={k: list(v) for k, v in tensors.items()},
        )
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            session.rollback()
            existing = _weights_by_sha(session, tenant, spool.sha256)
            if existing is None:  # pragma: no cover
                raise
        else:
            _place(spool.path, dest)
            return row, True
    if not dest.exists():
        _place(spool.path, dest)
    return existing, False


def _weights_by_sha(session: Session, tenant: str, sha256: str) -> WeightsFile | None:
    return session.scalar(
        select(WeightsFile).where(WeightsFile.tenant == tenant, WeightsFile.sha256 == sha256)
    )

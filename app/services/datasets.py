"""Dataset and weights uploads: receive (streamed, limited, hashed), read (the core infers the
schema, on a worker thread: it is CPU work), then store once per content (tas.store).

The same bytes read with the same options by the same tenant are the same dataset: the first
upload answers 201, a repeat 200 with the existing dataset (its first name kept)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.schemas.datasets import (
    NAME_MAX_LENGTH,
    DatasetForm,
    DatasetOut,
    DatasetSchemaOut,
    WeightsForm,
    WeightsOut,
)
from app.services import quotas, uploads
from tas.core.data.dataset import DatasetInfo
from tas.core.data.formats.upload import UploadError, UploadLimits, UploadOptions, read_upload
from tas.core.data.registry import BUILTIN_DATASETS
from tas.core.errors import DataError
from tas.core.objstore import ObjectStoreError
from tas.core.transfer import WeightsMismatch, safetensors_shapes
from tas.errors import ArtifactStoreError, ArtifactStoreUnavailable, DomainError, body_error
from tas.settings import Settings
from tas.store import datasets as dataset_store
from tas.store import files as file_store
from tas.store import weights as weights_store
from tas.store.artifacts import open_artifacts, store_unreachable
from tas.store.orm import Dataset, WeightsFile
from tas.store.unit_of_work import after_commit

log = logging.getLogger(__name__)

MAX_TENSORS = 10_000


# ---------------------------------------------------------------------------------------------
# Output shapes.


def builtin_out(info: DatasetInfo) -> DatasetOut:
    return DatasetOut(
        id=info.name,
        name=info.name,
        builtin=True,
        format="builtin",
        dataset_schema=DatasetSchemaOut(
            format="builtin",
            task=info.task,
            kind=info.kind,
            samples=info.samples,
            input_shape=list(info.input_shape),
            num_classes=info.num_classes,
            class_names=info.class_names,
            target_dim=info.target_dim,
            has_test_split=info.has_test_split,
            feature_names=info.feature_names,
            class_counts=info.class_counts,
        ),
    )


def upload_out(row: Dataset) -> DatasetOut:
    return DatasetOut(
        id=row.id,
        name=row.name,
        builtin=False,
        format=row.format,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        created_at=row.created_at,
        dataset_schema=DatasetSchemaOut.model_validate(row.schema),
    )


def weights_out(row: WeightsFile) -> WeightsOut:
    return WeightsOut(
        id=row.public_id,
        sha256=row.sha256,
        name=row.name,
        size_bytes=row.size_bytes,
        tensors=row.tensors,
        created_at=row.created_at,
    )


def builtins() -> list[DatasetOut]:
    return [builtin_out(src.info) for src in BUILTIN_DATASETS.values()]


# ---------------------------------------------------------------------------------------------
# The form's fields.


def upload_options(fields: dict[str, str]) -> UploadOptions:
    """The form's read options, checked by the core (which names the field at fault)."""

    def text(key: str) -> str | None:
        return fields.get(key, "").strip() or None

    try:
        return UploadOptions(
            format=text("format"),
            target=text("target"),
            task=text("task"),  # type: ignore[arg-type]
            size=text("size"),  # type: ignore[arg-type]
        )
    except UploadError as exc:
        raise body_error(exc.field, exc.message, exc.status) from exc


def dataset_name(value: str | None, file_name: str) -> str:
    name = (value or "").strip()
    if not name:
        return Path(file_name).stem or file_name
    if len(name) > NAME_MAX_LENGTH or not name.isprintable():
        raise body_error("name", f"a name is 1 to {NAME_MAX_LENGTH} printable characters")
    return name


# ---------------------------------------------------------------------------------------------
# Uploads.


async def _spool(session: Session, settings: Settings, tenant: str) -> file_store.Spool:
    """A spool bounded by TAS_MAX_UPLOAD_MB and by the room left in the tenant's storage quota
    (a 413 naming the quota before a byte of the body is read when there is none). An upload is
    counted at its full size even when it turns out to repeat one the tenant has (it is refused
    before anyone knows)."""
    bound = await run_in_threadpool(quotas.upload_bound, session, settings, tenant)
    return file_store.Spool(file_store.tmp_dir(settings), bound.max_bytes, refusal=bound.refusal)


def _read(
    path: Path, file_name: str, options: UploadOptions, limits: UploadLimits
) -> dict[str, Any]:
    """The core reads the upload and infers its schema; every refusal becomes a 4xx naming the
    form field (nothing a client sends may give a 500)."""
    try:
        parsed = read_upload(path, file_name, options, limits)
        schema: dict[str, Any] = parsed.schema()
        return schema
    except UploadError as exc:
        raise body_error(exc.field, exc.message, exc.status) from exc
    except DataError as exc:
        raise body_error("file", exc.message) from exc
    except MemoryError as exc:
        raise body_error("file", "the upload needs more memory than this server has", 413) from exc
    except Exception as exc:
        log.exception("reading upload %s failed", file_name)
        raise body_error(
            "file", f"could not read the upload ({type(exc).__name__}: {exc})"
        ) from exc


@contextmanager
def _storing(settings: Settings) -> Iterator[None]:
    """Storing a checked upload: with an artifact store, its failures are the upstream's (the
    request was fine): a store that does not answer is a 503 to retry, one that takes other bytes
    than were sent a 502; nothing is recorded either way (the row is rolled back with the unit of
    work). Locally, errors are left as they are (the server's own disk)."""
    try:
        yield
    except DomainError:
        raise
    except ObjectStoreError as exc:
        log.error("the artifact store did not keep an upload: %s", exc)
        raise ArtifactStoreError(
            "the artifact store did not keep the upload as sent; send it again"
        ) from None
    except Exception as exc:
        if not open_artifacts(settings).remote or not isinstance(exc, store_unreachable()):
            raise
        name = getattr(exc, "filename", None)
        if name and Path(str(name)).is_relative_to(settings.resolved_uploads_dir):
            raise  # this machine's own disk (the temp file), not the store
        log.warning("the artifact store did not answer while storing an upload", exc_info=True)
        raise ArtifactStoreUnavailable(
            "the artifact store did not answer while the upload was stored; send it again"
        ) from None


async def upload_dataset(
    request: Request, session: Session, settings: Settings, tenant: str
) -> tuple[Dataset, bool]:
    """Receive, read and store one dataset upload; (the dataset, whether it is new)."""
    with await _spool(session, settings, tenant) as spool:
        got = await uploads.receive(request, spool, form=DatasetForm)
        options = upload_options(got.fields)
        file_name = file_store.safe_file_name(got.filename)
        name = dataset_name(got.fields.get("name"), file_name)
        schema = await run_in_threadpool(
            _read, spool.path, file_name, options, file_store.upload_limits(settings)
        )
        with _storing(settings):
            return await run_in_threadpool(
                functools.partial(
                    dataset_store.add_dataset,
                    session,
                    settings,
                    tenant=tenant,
                    name=name,
                    file_name=file_name,
                    spool=spool,
                    schema=schema,
                )
            )


def delete_dataset(session: Session, settings: Settings, row: Dataset) -> None:
    """Drop the row; its file (or, with an artifact store, its object) goes once the deletion is
    committed, if no other row uses it."""
    relative = row.path
    if dataset_store.delete_dataset(session, settings, row) is not None:
        after_commit(session, file_store.remove_upload, settings, relative)


# ---------------------------------------------------------------------------------------------
# Weights.


def delete_weights(session: Session, settings: Settings, row: WeightsFile) -> None:
    """Drop the row; its file (or, with an artifact store, its object) goes once the deletion is
    committed."""
    relative = weights_store.delete_weights(session, row)
    after_commit(session, file_store.remove_upload, settings, relative)


def safetensors_tensors(path: Path) -> dict[str, list[int]]:
    """Each tensor's shape, from the safetensors header (what init_from's shape check reads too);
    422 for anything that is not one. Nothing is unpickled, nothing but the header is read."""
    try:
        shapes = safetensors_shapes(path)
    except WeightsMismatch as exc:
        raise body_error(
            "file",
            f"not a safetensors file ({exc.__cause__}); weights are read only from safetensors,"
            " never unpickled: save them with safetensors.torch.save_file(model.state_dict(), path)",
        ) from exc
    if len(shapes) > MAX_TENSORS:
        raise body_error("file", f"{len(shapes)} tensors; at most {MAX_TENSORS}")
    if not shapes:
        raise body_error("file", "the safetensors file holds no tensors")
    return {n: list(shape) for n, shape in shapes.items()}


async def upload_weights(
    request: Request, session: Session, settings: Settings, tenant: str
) -> tuple[WeightsFile, bool]:
    with await _spool(session, settings, tenant) as spool:
        got = await uploads.receive(request, spool, form=WeightsForm)
        tensors = await run_in_threadpool(safetensors_tensors, spool.path)
        name = dataset_name(
            got.fields.get("name"), file_store.safe_file_name(got.filename, "weights")
        )
        with _storing(settings):
            return await run_in_threadpool(
                functools.partial(
                    weights_store.add_weights,
                    session,
                    settings,
                    tenant=tenant,
                    name=name,
                    spool=spool,
                    tensors=tensors,
                )
            )

"""Datasets: uploads (multipart, streamed to disk) and the built-ins, side by side."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from app.api.deps import AuditedRouter, DatasetDep, SessionDep, SettingsDep, TenantDep, requires
from app.api.query import StrictQuery
from app.schemas.datasets import DatasetForm, DatasetOut, DatasetPage
from app.services import datasets as service
from tas.core.data.registry import BUILTIN_DATASETS
from tas.store import datasets as dataset_store

router = AuditedRouter(
    prefix="/datasets",
    tags=["datasets"],
    dependencies=[requires("datasets:read", "datasets:write")],
)

_FORM: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": DatasetForm.model_json_schema()}},
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    openapi_extra=_FORM,
    responses={
        200: {
            "model": DatasetOut,
            "description": "The same bytes and options were uploaded before",
        },
        413: {
            "description": "Over TAS_MAX_UPLOAD_MB or the room left in the tenant's storage"
            " quota (TAS_MAX_STORED_MB_PER_TENANT), or an archive or image over its limits"
        },
        415: {"description": "Not multipart/form-data, or a file type that is not supported"},
        422: {"description": "Unusable data; `detail` names the field and what is wrong"},
    },
)
async def upload_dataset(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    response: Response,
) -> DatasetOut:
    """Upload a CSV, an NPZ (X, y) or a ZIP of images (class folders, or an annotations CSV): the
    answer is the dataset with its inferred schema. The same bytes with the same options give the
    same dataset (201 the first time, 200 after)."""
    row, created = await service.upload_dataset(request, session, settings, tenant)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    response.headers["Location"] = f"/datasets/{row.id}"
    return service.upload_out(row)


@router.get("", response_model=DatasetPage, dependencies=[StrictQuery])
def list_datasets(
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> DatasetPage:
    """The built-ins (on the first page), then your uploads, newest first."""
    page = dataset_store.list_datasets(session, tenant=tenant, limit=limit, cursor=cursor)
    items = [] if cursor is not None else service.builtins()
    items += [service.upload_out(row) for row in page.items]
    return DatasetPage(items=items, next_cursor=page.next_cursor)


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(
    dataset_id: Annotated[str, Path(max_length=64)], session: SessionDep, tenant: TenantDep
) -> DatasetOut:
    """An upload by id, or a built-in by name."""
    if dataset_id in BUILTIN_DATASETS:
        return service.builtin_out(BUILTIN_DATASETS[dataset_id].info)
    return service.upload_out(dataset_store.get_dataset(session, dataset_id, tenant=tenant))


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={409: {"description": "A queued or running job uses it, or it is a built-in"}},
)
async def delete_dataset(dataset: DatasetDep, session: SessionDep, settings: SettingsDep) -> None:
    """Delete an upload (its file goes once no other dataset uses the same bytes)."""
    await run_in_threadpool(service.delete_dataset, session, settings, dataset)

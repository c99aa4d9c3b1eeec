"""Weights files for transfer learning: upload a safetensors file, start a job from it with
`model.init_from: "weights:<id>"`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Request, Response, status
from starlette.concurrency import run_in_threadpool

from app.api.deps import AuditedRouter, SessionDep, SettingsDep, TenantDep, requires
from app.schemas.datasets import WeightsForm, WeightsOut
from app.services import datasets as service
from tas.errors import WeightsNotFound
from tas.store import weights as weights_store

router = AuditedRouter(
    prefix="/weights", tags=["weights"], dependencies=[requires("datasets:read", "datasets:write")]
)

_FORM: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": WeightsForm.model_json_schema()}},
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WeightsOut,
    openapi_extra=_FORM,
    responses={
        200: {"model": WeightsOut, "description": "The same file was uploaded before"},
        413: {
            "description": "Over TAS_MAX_UPLOAD_MB or the room left in the tenant's storage"
            " quota (TAS_MAX_STORED_MB_PER_TENANT)"
        },
        415: {"description": "Not multipart/form-data"},
        422: {"description": "Not a safetensors file"},
    },
)
async def upload_weights(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    response: Response,
) -> WeightsOut:
    """Upload a safetensors file (its header is checked; nothing is ever unpickled)."""
    row, created = await service.upload_weights(request, session, settings, tenant)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    response.headers["Location"] = f"/weights/{row.public_id}"
    return service.weights_out(row)


@router.get("/{weights_id}", response_model=WeightsOut)
def get_weights(
    weights_id: Annotated[str, Path(max_length=64)], session: SessionDep, tenant: TenantDep
) -> WeightsOut:
    row = weights_store.find_weights(session, weights_id, tenant=tenant)
    if row is None:
        raise WeightsNotFound(weights_id)
    return service.weights_out(row)


@router.delete(
    "/{weights_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={409: {"description": "A queued or running job starts from them (init_from)"}},
)
async def delete_weights(
    weights_id: Annotated[str, Path(max_length=64)],
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
) -> None:
    """Delete uploaded weights and their file. Jobs that already started from them keep their
    own copy of what they trained."""
    row = await run_in_threadpool(weights_store.find_weights, session, weights_id, tenant=tenant)
    if row is None:
        raise WeightsNotFound(weights_id)
    await run_in_threadpool(service.delete_weights, session, settings, row)

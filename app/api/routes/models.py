from __future__ import annotations

from itertools import groupby

from fastapi import APIRouter
from sqlalchemy import select

from app.api.deps import SessionDep, TenantDep
from app.schemas.predict import ModelOut, ModelVersionOut
from tas.db.models import ModelVersion
from tas.errors import ModelNotFound

router = APIRouter(prefix="/models", tags=["models"])


def _model(name: str, versions: list[ModelVersion]) -> ModelOut:
    out = [ModelVersionOut.model_validate(v) for v in sorted(versions, key=lambda v: -v.version)]
    return ModelOut(name=name, latest_version=out[0].version, versions=out)


@router.get("", response_model=list[ModelOut])
def list_models(session: SessionDep, tenant: TenantDep) -> list[ModelOut]:
    rows = session.scalars(
        select(ModelVersion).where(ModelVersion.tenant == tenant).order_by(ModelVersion.name)
    )
    return [_model(name, list(vs)) for name, vs in groupby(rows, key=lambda v: v.name)]


@router.get("/{name}", response_model=ModelOut)
def get_model(name: str, session: SessionDep, tenant: TenantDep) -> ModelOut:
    versions = list(
        session.scalars(
            select(ModelVersion).where(ModelVersion.tenant == tenant, ModelVersion.name == name)
        )
    )
    if not versions:
        raise ModelNotFound(name)
    return _model(name, versions)

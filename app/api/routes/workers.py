from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import PrincipalDep, SessionDep, SettingsDep, requires
from app.api.query import StrictQuery
from app.schemas.workers import WorkerOut
from app.services import workers as worker_service

router = APIRouter(prefix="/workers", tags=["workers"], dependencies=[requires("jobs:read")])


@router.get("", response_model=list[WorkerOut], dependencies=[StrictQuery])
def list_workers(
    session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> list[dict[str, Any]]:
    """Workers heard from recently (TAS_WORKER_FORGET_S), live ones first: the queues each
    consumes, its devices and capacity, and how many of the caller's tenant's jobs it runs now
    (never another tenant's). A worker beats every TAS_WORKER_HEARTBEAT_S; three missed beats
    and it is `lost`. Its host name and pid are shown to a key with `admin` too."""
    return worker_service.listed(session, settings, principal)

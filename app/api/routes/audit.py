"""`/audit`: who wrote what, for `admin` keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import SessionDep, requires
from app.api.query import StrictQuery
from app.schemas.keys import AuditEventOut, AuditPage
from tas.store import audit as audit_store
from tas.store.keys import TENANT_PATTERN

router = APIRouter(prefix="/audit", tags=["audit"], dependencies=[requires("admin")])


@router.get("", response_model=AuditPage, dependencies=[StrictQuery])
def list_audit(
    session: SessionDep,
    tenant: Annotated[str | None, Query(pattern=TENANT_PATTERN, max_length=63)] = None,
    key_id: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> AuditPage:
    """Writes newest first (submit, cancel, upload, delete, alias moves, key changes), every
    tenant's unless `tenant` is given."""
    page = audit_store.list_events(
        session, tenant=tenant, key_id=key_id, limit=limit, cursor=cursor
    )
    return AuditPage(
        items=[AuditEventOut.model_validate(e) for e in page.items], next_cursor=page.next_cursor
    )

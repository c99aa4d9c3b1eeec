"""The audit log: every write, with the key and tenant that made it, in the same transaction as
the write itself (a write that rolls back leaves no audit row; one that commits always has one)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tas.store import pagination
from tas.store.orm import AuditEvent


def record(
    session: Session,
    *,
    tenant: str,
    key_id: str | None,
    action: str,
    route: str,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEvent(
            tenant=tenant,
            key_id=key_id,
            action=action,
            route=route[:255],
            target=target[:255] if target else None,
            detail=detail,
        )
    )


def list_events(
    session: Session,
    *,
    tenant: str | None,
    key_id: str | None,
    limit: int,
    cursor: str | None,
) -> pagination.Page[AuditEvent]:
    """Newest first; every tenant's when `tenant` is None (the audit log is read by admins)."""
    query = select(AuditEvent)
    if tenant is not None:
        query = query.where(AuditEvent.tenant == tenant)
    if key_id is not None:
        query = query.where(AuditEvent.key_id == key_id)
    return pagination.paginate(
        session,
        query,
        created_col=AuditEvent.created_at,
        id_col=AuditEvent.id,
        limit=limit,
        cursor=cursor,
    )

"""`/keys`: API keys of every tenant, managed by `admin` keys (the same as `tas keys` does)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query, Request, Response, status

from app.api.deps import AuditedRouter, SessionDep, requires
from app.api.query import StrictQuery
from app.schemas.keys import CreatedKeyOut, KeyIn, KeyOut, KeyPage
from app.services.auth import Authenticator
from tas.store import keys as key_store
from tas.store.keys import TENANT_PATTERN
from tas.store.unit_of_work import after_commit

router = AuditedRouter(prefix="/keys", tags=["keys"], dependencies=[requires("admin", "admin")])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CreatedKeyOut)
def create_key(
    body: KeyIn, session: SessionDep, request: Request, response: Response
) -> CreatedKeyOut:
    """A new key for `tenant` with `scopes`. The answer holds the key itself, once: keep it."""
    auth: Authenticator = request.app.state.auth
    row, token = key_store.create_key(
        session,
        auth.secret,
        tenant=body.tenant,
        scopes=body.scopes,
        name=body.name,
        expires_days=body.expires_days,
    )
    after_commit(session, auth.keys_created)
    response.headers["Location"] = f"/keys/{row.id}"
    return CreatedKeyOut(**KeyOut.model_validate(row).model_dump(), key=token)


@router.get("", response_model=KeyPage, dependencies=[StrictQuery])
def list_keys(
    session: SessionDep,
    tenant: Annotated[str | None, Query(pattern=TENANT_PATTERN, max_length=63)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> KeyPage:
    """Keys (never a secret), newest first, a page at a time; every tenant's unless `tenant` is
    given."""
    page = key_store.list_keys(session, tenant=tenant, limit=limit, cursor=cursor)
    return KeyPage(
        items=[KeyOut.model_validate(k) for k in page.items], next_cursor=page.next_cursor
    )


@router.delete("/{key_id}", response_model=KeyOut)
def revoke_key(
    session: SessionDep, request: Request, key_id: Annotated[str, Path(max_length=32)]
) -> KeyOut:
    """Revoke a key: from now on it is refused like an unknown one (by other API processes
    within TAS_AUTH_CACHE_S)."""
    auth: Authenticator = request.app.state.auth
    row = key_store.revoke_key(session, key_id)
    after_commit(session, auth.forget, row.id)
    return KeyOut.model_validate(row)

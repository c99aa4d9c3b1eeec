"""`/session`: who the caller is. The dashboard reads it on every page (the tenant to show, the
scopes that decide which buttons it offers, the CSRF token its writes carry); a script can use it
to check a key."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import PrincipalDep
from app.schemas.session import SessionOut
from app.services.auth import SESSION_COOKIE, Authenticator

router = APIRouter(prefix="/session", tags=["session"])


@router.get("", response_model=SessionOut)
async def get_session(request: Request, principal: PrincipalDep) -> SessionOut:
    """Any valid key or browser session may ask (no scope needed)."""
    auth: Authenticator = request.app.state.auth
    cookie = request.cookies.get(SESSION_COOKIE)
    signed_in = cookie is not None and "authorization" not in request.headers
    return SessionOut(
        tenant=principal.tenant,
        scopes=sorted(principal.scopes),
        key_id=principal.key_id,
        open=principal.key_id is None,
        csrf_token=auth.csrf_token(cookie) if signed_in and cookie else None,
    )

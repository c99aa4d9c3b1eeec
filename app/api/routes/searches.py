"""Hyperparameter searches: a base job spec, a space of spec paths, an objective; trials are
ordinary jobs (GET /jobs?search_id=...). The controller in the API process runs them
(`tas.search`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query, Response, status

from app.api.deps import AuditedRouter, SessionDep, SettingsDep, TenantDep, requires
from app.api.query import StrictQuery
from app.schemas.searches import SearchIn, SearchOut, SearchPage
from app.services import searches as search_service
from tas.store import searches as search_store

#: Searches run jobs: the jobs scopes open them.
router = AuditedRouter(
    prefix="/searches", tags=["searches"], dependencies=[requires("jobs:read", "jobs:write")]
)

SearchIdPath = Annotated[str, Path(max_length=64)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SearchOut)
def create_search(
    body: SearchIn,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    response: Response,
) -> dict[str, Any]:
    """Check the base spec, the objective and the space (every trial spec it can make must pass
    POST /jobs' checks: a 422 names the path that breaks one), then queue the search: trials
    start within about a second, as jobs named `<name>-t<number>`, at most `max_concurrent` at
    once, each counted against the tenant's job limit."""
    search = search_service.create(session, body, tenant=tenant, settings=settings)
    response.headers["Location"] = f"/searches/{search.id}"
    return search_service.view(session, search)


@router.get("", response_model=SearchPage, dependencies=[StrictQuery])
def list_searches(
    session: SessionDep,
    tenant: TenantDep,
    status: Annotated[
        list[str] | None,
        Query(description="One or several (repeated, or comma-separated): any of them."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> dict[str, Any]:
    """Newest first, paged as GET /jobs; items leave out `trials` (`trial_count`, `counts` and
    `best` say how it goes)."""
    return search_service.page(session, tenant=tenant, limit=limit, cursor=cursor, status=status)


@router.get("/{search_id}", response_model=SearchOut)
def get_search(session: SessionDep, tenant: TenantDep, search_id: SearchIdPath) -> dict[str, Any]:
    """The search with every trial: its job, parameters, state, objective per epoch; the best
    trial, parameter importances once 4 trials have completed, and where the best model was
    registered."""
    search = search_store.get_search(session, search_id, tenant=tenant)
    return search_service.view(session, search)


@router.post(
    "/{search_id}/cancel",
    response_model=SearchOut,
    responses={409: {"description": "The search has already finished"}},
)
def cancel_search(
    session: SessionDep, tenant: TenantDep, search_id: SearchIdPath
) -> dict[str, Any]:
    """Stop the search: no trial starts any more, queued trials are cancelled at once and running
    ones at their next step (409 once finished)."""
    search = search_store.get_search(session, search_id, tenant=tenant)
    return search_service.cancel(session, search)

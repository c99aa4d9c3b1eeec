"""Request-scoped dependencies. Everything the routes need comes from `app.state`, set once by
`create_app`: the settings, the session factory, the publisher and the predictor cache."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from anyio import CancelScope, CapacityLimiter
from anyio.lowlevel import RunVar
from fastapi import APIRouter, Depends, Path, Request, Response, Security, params
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.services.auth import CSRF_HEADER, SESSION_COOKIE, Authenticator
from app.services.serving import Serving
from tas.core.data.registry import BUILTIN_DATASETS
from tas.errors import Conflict, CrossSiteWrite
from tas.queue import Publisher
from tas.settings import Settings
from tas.store import audit as audit_store
from tas.store import datasets as dataset_store
from tas.store import jobs as job_store
from tas.store.artifacts import Artifacts
from tas.store.engine import KeptReaders
from tas.store.keys import Principal
from tas.store.orm import Dataset, Job
from tas.store.unit_of_work import pending_actions, unit_of_work


async def get_settings(request: Request) -> Settings:
    """async: FastAPI runs a plain `def` dependency on a worker thread (see `get_serving`)."""
    settings: Settings = request.app.state.settings
    return settings


#: Methods whose routes only read: their sessions come from the read-only factory (on SQLite
#: their transaction takes no lock).
READ_METHODS = frozenset({"GET", "HEAD"})


async def get_session(request: Request) -> AsyncIterator[Session]:
    """The request's unit of work (tas.store.unit_of_work): committed when the route returns,
    rolled back when it raises; what the route queued with `after_commit` runs after the commit.
    Routes and services never commit.

    SessionDep declares scope "function": FastAPI then ends this dependency when the route has
    returned and its response is built, before a byte is sent, so a client that has its 201 can
    read the row at once (and a failed commit answers 500, never a 201 for a rolled-back row).
    FastAPI's default for a dependency with `yield` ends it after the response is sent.

    async, where a sync generator costs a worker-thread hop to open and another to end: opening
    a session does no IO (it connects at its first query), so it opens here on the event loop.
    Ending one that was used (a commit, then the after-commit actions: a broker publish, files
    removed) can block, so that runs on a worker thread; a session nothing touched (a route
    that reads in its own unit, see `read`) ends here, with nothing to wait for."""
    state = request.app.state
    sessions = state.readers if request.method in READ_METHODS else state.sessions
    unit = unit_of_work(sessions)
    session = unit.__enter__()
    try:
        yield session
    except BaseException as exc:
        if not await _end(unit, session, exc):
            raise
    else:
        await _end(unit, session, None)


async def _end(
    unit: AbstractContextManager[Session], session: Session, exc: BaseException | None
) -> bool:
    """`unit.__exit__`: on a worker thread, shielded from cancellation (a commit that has begun
    finishes; the unit's own rollback handles a failure), unless the session never began a
    transaction. True when it swallowed `exc` (never, for `unit_of_work`)."""
    args = (type(exc), exc, exc.__traceback__) if exc is not None else (None, None, None)
    if not session.in_transaction() and not pending_actions(session):
        return bool(unit.__exit__(*args))
    with CancelScope(shield=True):
        # Its own limiter, as FastAPI's `contextmanager_in_threadpool` does: an exit that waited
        # for a free thread while every thread waits for a connection it holds would deadlock.
        swallowed = await anyio.to_thread.run_sync(unit.__exit__, *args, limiter=CapacityLimiter(1))
    return bool(swallowed)


R = TypeVar("R")

#: Worker threads that `read` uses at once: fewer than the engine pool's 5 kept connections, so
#: a burst of polls never opens (and closes again) overflow connections, which on SQLite cost
#: more than the read (each connect sets its pragmas); more threads would only queue for the GIL.
READ_THREADS = 4


async def read(request: Request, fn: Callable[[Session], R]) -> R:
    """`fn(session)` in a read-only unit of work of its own, all of it (connect, queries,
    whatever `fn` builds from the rows, the end of the transaction) in one worker-thread hop:
    for the read paths that the dashboard and clients poll, where a route built from SessionDep,
    JobDep and a response model pays a hop for each of them."""
    readers: sessionmaker[Session] = request.app.state.readers

    def run() -> R:
        with unit_of_work(readers) as session:
            return fn(session)

    return await anyio.to_thread.run_sync(run, limiter=_read_limiter())


async def read_kept(request: Request, fn: Callable[[Connection], R]) -> R:
    """`read` for the one read polled most, GET /jobs/{id}: `fn(connection)` in a read-only
    transaction on a connection kept open between requests (`tas.store.engine.KeptReaders`),
    without an ORM session. On SQLite it runs right here on the event loop (see
    `KeptReaders.inline`: 0.36x -> 0.78x a bare route's requests/s); a read that finds the file
    locked gives up within milliseconds and is retried on a worker thread, which may wait."""
    kept: KeptReaders = request.app.state.kept_readers

    def run() -> R:
        with kept.transaction() as conn:
            return fn(conn)

    def run_patiently() -> R:
        with kept.patient() as conn:
            return fn(conn)

    if kept.inline:
        try:
            return run()
        except OperationalError:
            return await anyio.to_thread.run_sync(run_patiently, limiter=_read_limiter())
    return await anyio.to_thread.run_sync(run, limiter=_read_limiter())


#: One limiter per event loop (anyio's own default limiter is kept the same way).
_READ_LIMITER: RunVar[CapacityLimiter] = RunVar("tas_read_limiter")


def _read_limiter() -> CapacityLimiter:
    try:
        return _READ_LIMITER.get()
    except LookupError:
        limiter = CapacityLimiter(READ_THREADS)
        _READ_LIMITER.set(limiter)
        return limiter


async def get_publisher(request: Request) -> Publisher:
    publisher: Publisher = request.app.state.publisher
    return publisher


async def get_artifacts(request: Request) -> Artifacts:
    """The artifact store and this machine's cache of it (`tas.store.artifacts`), opened once."""
    artifacts: Artifacts = request.app.state.artifacts
    return artifacts


async def get_serving(request: Request) -> Serving:
    """async: FastAPI runs a plain `def` dependency on a worker thread, a hop /predict can't afford."""
    serving: Serving = request.app.state.serving
    return serving


#: Documents the scheme (OpenAPI's `securitySchemes`, the Authorize button of /docs); the header
#: itself is read raw below, so every malformed variant gets the same 401.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An API key, `tas_<id>_<secret>` (`tas keys create`), as a bearer token.",
)


async def get_principal(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
) -> Principal:
    """The caller, from `Authorization: Bearer <key>` (401 without a valid one once any key
    exists). A key checked recently is answered from memory, so /predict does not wait on the
    database; async for the same reason as `get_serving`."""
    auth: Authenticator = request.app.state.auth
    header = request.headers.get("authorization")
    if header is None:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            return await _session_principal(request, auth, cookie)
        if request.method not in READ_METHODS and _cross_site(request):
            raise CrossSiteWrite("another site's page may not change anything here")
    principal = auth.cached(header)
    if principal is None:
        principal = await run_in_threadpool(auth.authenticate, header)
    return principal


def _cross_site(request: Request) -> bool:
    """Whether a browser says another site's page sent this request (Sec-Fetch-Site, which
    every current browser sends and no page can forge). Matters while no key exists: a page on
    any site could otherwise make the browser of someone running tas locally submit or cancel."""
    return request.headers.get("sec-fetch-site") == "cross-site"


async def _session_principal(request: Request, auth: Authenticator, cookie: str) -> Principal:
    """A signed-in browser (the dashboard). Its writes must carry the page's CSRF token: the
    cookie rides along on any request the browser makes, including ones another site makes it
    send (SameSite=Strict already stops most; the token stops the rest)."""
    principal = auth.cached_session(cookie)
    if principal is None:
        principal = await run_in_threadpool(auth.session, cookie)
    if request.method not in READ_METHODS and (
        _cross_site(request) or not auth.check_csrf(cookie, request.headers.get(CSRF_HEADER))
    ):
        raise CrossSiteWrite(
            "a signed-in browser's writes must carry the page's CSRF token in the"
            " 'X-CSRF-Token' header (GET /session answers it)"
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_tenant(principal: PrincipalDep) -> str:
    """The tenant whose objects the caller sees: every store query filters by it in SQL."""
    return principal.tenant


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
TenantDep = Annotated[str, Depends(get_tenant)]
ServingDep = Annotated[Serving, Depends(get_serving)]
ArtifactsDep = Annotated[Artifacts, Depends(get_artifacts)]


def requires(read: str | tuple[str, ...], write: str | None = None) -> params.Depends:
    """A router's scopes: `read` for GET/HEAD, `write` for every other method (403 naming the
    scope a key lacks). Declared once per router, so a new route is covered by its router."""
    reads = (read,) if isinstance(read, str) else read

    async def check(request: Request, principal: PrincipalDep) -> None:
        if request.method in READ_METHODS or write is None:
            principal.require(*reads)
        else:
            principal.require(write)

    dependency: params.Depends = Depends(check)
    return dependency


async def record_write(
    request: Request, response: Response, session: SessionDep, principal: PrincipalDep
) -> AsyncIterator[None]:
    """Writes leave an audit row in the request's own unit of work, so the row commits with the
    write or not at all: added after the route returned (a write that raised is rolled back and
    leaves none), naming the key, the route and the target: the
    path's ids, or for a create the `Location` the route answered with, and the `detail` a route
    left in `request.state.audit_detail` (what the path does not say, e.g. the version an alias
    was moved to). Only write routes carry it (`AuditedRouter`). async: adding a row does no IO
    (the commit writes it)."""
    yield
    route = request.scope.get("route")
    template = getattr(route, "path", request.url.path)
    target = "/".join(str(v) for v in request.path_params.values()) or None
    location = response.headers.get("location")
    audit_store.record(
        session,
        tenant=principal.tenant,
        key_id=principal.key_id,
        action=f"{request.method} {template}",
        route=request.url.path,
        target=location or target,
        detail=getattr(request.state, "audit_detail", None),
    )


_AUDITED = Depends(record_write, scope="function")


class AuditedRouter(APIRouter):
    """A router whose write routes (every method but GET/HEAD) are audited (`record_write`) and
    whose reads are not: on a read the hook would record nothing, yet as a dependency with
    `yield` (and the session it takes) it would cost every GET two context managers on the
    request's exit stack: a fifth of what a polled read costs the event loop."""

    def add_api_route(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        methods: set[str] | list[str] | None = None,
        dependencies: Sequence[params.Depends] | None = None,
        **kwargs: Any,
    ) -> None:
        if {m.upper() for m in methods or ("GET",)} - READ_METHODS:
            dependencies = [_AUDITED, *(dependencies or ())]
        super().add_api_route(path, endpoint, methods=methods, dependencies=dependencies, **kwargs)


#: A job id in a route's path.
JobIdPath = Annotated[str, Path(max_length=64)]


def load_job(session: SessionDep, tenant: TenantDep, job_id: JobIdPath) -> Job:
    return job_store.get_job(session, job_id, tenant=tenant)


JobDep = Annotated[Job, Depends(load_job)]


def load_dataset(
    session: SessionDep, tenant: TenantDep, dataset_id: Annotated[str, Path(max_length=64)]
) -> Dataset:
    """One of the tenant's uploads (another tenant's id answers 404, as an unknown one)."""
    if dataset_id in BUILTIN_DATASETS:
        raise Conflict(f"{dataset_id!r} is a built-in dataset; only uploads can be changed")
    return dataset_store.get_dataset(session, dataset_id, tenant=tenant)


DatasetDep = Annotated[Dataset, Depends(load_dataset)]

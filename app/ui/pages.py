"""The dashboard's pages and its sign-in. A page is a frame (app/ui/templates) that names its
ES module; the module draws the page from the API. Pages carry no tenant data; a browser that is
not signed in (once keys exist) is sent to the sign-in page before the frame loads, and a module
that still gets a 401 from the API (a session that ended meanwhile) sends it there too."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from app.services.auth import SESSION_COOKIE, Authenticator
from tas.errors import Unauthorized
from tas.settings import Settings

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")

router = APIRouter(include_in_schema=False)

#: Each page: its default title and its module under static/js/pages. One entry per page.
PAGES: dict[str, tuple[str, str]] = {
    "jobs": ("Jobs", "jobs.js"),
    "job": ("Job", "job.js"),
    "compare": ("Compare jobs", "compare.js"),
    "models": ("Models", "models.js"),
    "model": ("Model", "model.js"),
    "datasets": ("Datasets", "datasets.js"),
    "submit": ("Submit a job", "submit.js"),
    "searches": ("Searches", "searches.js"),
    "search": ("Search", "search.js"),
}


async def _signed_in(request: Request) -> bool:
    """Whether the API would accept this browser: a valid session cookie, or no key at all
    (an open server). Answered from the authenticator's cache when it can."""
    auth: Authenticator = request.app.state.auth
    cookie = request.cookies.get(SESSION_COOKIE)
    try:
        if cookie:
            if auth.cached_session(cookie) is None:
                await run_in_threadpool(auth.session, cookie)
        elif auth.cached(None) is None:
            await run_in_threadpool(auth.authenticate, None)
    except Unauthorized:
        return False
    return True


async def page(request: Request, name: str, **context: Any) -> Response:
    if not await _signed_in(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/ui/signin?next=" + quote(target, safe="/"), status_code=303)
    title, module = PAGES[name]
    return templates.TemplateResponse(
        request,
        "page.html",
        {"page": name, "title": context.pop("title", title), "module": module, **context},
        headers={"Cache-Control": "no-store"},
    )


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui/jobs", status_code=307)


@router.get("/ui")
async def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/jobs", status_code=307)


@router.get("/ui/jobs")
async def jobs_page(request: Request) -> Response:
    return await page(request, "jobs")


@router.get("/ui/jobs/{job_id}")
async def job_page(request: Request, job_id: str) -> Response:
    return await page(request, "job", title=f"Job {job_id[:8]}", object_id=job_id)


@router.get("/ui/searches")
async def searches_page(request: Request) -> Response:
    return await page(request, "searches")


@router.get("/ui/searches/{search_id}")
async def search_page(request: Request, search_id: str) -> Response:
    return await page(request, "search", title=f"Search {search_id[:8]}", object_id=search_id)


@router.get("/ui/compare")
async def compare_page(request: Request) -> Response:
    return await page(request, "compare")


@router.get("/ui/models")
async def models_page(request: Request) -> Response:
    return await page(request, "models")


@router.get("/ui/models/{name}")
async def model_page(request: Request, name: str) -> Response:
    return await page(request, "model", title=f"Model {name}", object_id=name)


@router.get("/ui/datasets")
async def datasets_page(request: Request) -> Response:
    return await page(request, "datasets")


@router.get("/ui/submit")
async def submit_page(request: Request) -> Response:
    return await page(request, "submit")


def _local(next_url: str | None) -> str:
    """Where to go after signing in: only a path on this server (never `//other.host`). A
    backslash or a control character is refused too: browsers read `/\\host` as `//host` and drop
    tabs and newlines from a URL, so `/<tab>/host` would leave the server as well."""
    if (
        next_url
        and next_url.startswith("/")
        and not next_url.startswith("//")
        and "\\" not in next_url
        and next_url.isprintable()
    ):
        return next_url
    return "/ui/jobs"


@router.get("/ui/signin")
async def signin_page(request: Request, next: str | None = None) -> HTMLResponse:
    return templates.TemplateResponse(
        request, "signin.html", {"title": "Sign in", "next": _local(next), "error": None}
    )


@router.post("/ui/signin")
async def signin(
    request: Request,
    api_key: Annotated[str, Form(max_length=256)],
    next: Annotated[str | None, Form(max_length=2048)] = None,
) -> Response:
    """An API key in, a session cookie out: HttpOnly (no script reads it), SameSite=Strict (no
    other site's request carries it), Secure over HTTPS. The cookie holds the key's id and a
    signature, never the key."""
    auth: Authenticator = request.app.state.auth
    settings: Settings = request.app.state.settings
    if request.headers.get("sec-fetch-site") == "cross-site":
        # Another site signing the browser in to its own key (login CSRF).
        return _signin_failed(request, next, "sign in from this server's own page", 403)
    try:
        cookie, _ = await run_in_threadpool(
            auth.open_session, api_key.strip(), settings.session_hours
        )
    except Unauthorized:
        return _signin_failed(
            request, next, "that API key is not valid (unknown, revoked or expired)", 401
        )
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(settings.session_hours * 3600),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _signin_failed(request: Request, next_url: str | None, error: str, status: int) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        "signin.html",
        {"title": "Sign in", "next": _local(next_url), "error": error},
        status_code=status,
    )


@router.post("/ui/signout")
async def signout(
    request: Request, csrf_token: Annotated[str, Form(max_length=256)] = ""
) -> Response:
    """Ends the browser's session (the form carries the page's CSRF token, so another site
    cannot sign a user out)."""
    auth: Authenticator = request.app.state.auth
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and not auth.check_csrf(cookie, csrf_token):
        return Response(
            "the sign-out form's CSRF token does not match this session", status_code=403
        )
    response = RedirectResponse("/ui/signin?next=" + quote("/ui/jobs"), status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response

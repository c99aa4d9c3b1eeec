"""The dashboard behind API keys, in chromium: its own `tas serve` and data dir, since once a key
exists the server is closed for good. No worker: jobs stay queued, which is all the tenancy and
CSRF checks need.

A browser with no session is sent to the sign-in page; an API key signs it in (an HttpOnly,
SameSite=Strict cookie that holds no key); the jobs page then shows that tenant's jobs only; a
write the session makes without the page's CSRF token is refused, the same write with it goes
through."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from app.services.auth import CSRF_HEADER, SESSION_COOKIE
from tests.helpers.servers import free_port
from tests.helpers.specs import iris_spec
from tests.helpers.stack import Stack, base_env, spawn, wait_http

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from tests.helpers.browser import Guard

pytestmark = pytest.mark.integration

SCOPES = "jobs:read,jobs:write,datasets:read,models:read"


@contextlib.contextmanager
def api_only_stack(tmp: Path) -> Iterator[Stack]:
    """`tas serve --no-worker`: the API alone (keys are checked at once, not cached)."""
    port = free_port()
    env = base_env(tmp / "var", TAS_AUTH_CACHE_S="0")
    stack = Stack("signin", f"http://127.0.0.1:{port}", env, tmp / "var", tmp)
    try:
        serve = spawn("serve", ["serve", "--no-worker", "--port", str(port)], env, tmp)
        stack.procs.append(serve)
        wait_http(stack, serve)
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, browser: Browser) -> Iterator[Stack]:
    with api_only_stack(tmp_path_factory.mktemp("signin")) as s:
        yield s


def create_key(stack: Stack, tenant: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "tas", "keys", "create", "--tenant", tenant, "--scopes", SCOPES],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("tas_"), out.stdout
    return key


@pytest.fixture(scope="module")
def tenants(stack: Stack) -> dict[str, tuple[str, str]]:
    """Tenant name -> (its key, its one queued job's id)."""
    out = {}
    for tenant in ("alpha", "beta"):
        key = create_key(stack, tenant)
        r = stack.http.post(
            "/jobs",
            json=iris_spec(name=f"{tenant}-job"),
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 201, r.text
        out[tenant] = (key, r.json()["id"])
    assert stack.http.get("/jobs").status_code == 401, "a key exists: the server is closed"
    return out


def sign_in(page: Page, key: str) -> None:
    page.fill("#api_key", key)
    page.click("button[type=submit]")


def test_sign_in_shows_only_the_tenants_jobs(
    page: Page, guard: Guard, tenants: dict[str, tuple[str, str]]
) -> None:
    (alpha_key, alpha_job), (_, beta_job) = tenants["alpha"], tenants["beta"]
    # A wrong key is refused with a 401 page (and a page's API call answers 401 before it sends
    # the browser to sign in): chromium logs them as failed loads, expected here.
    guard.expect_error(r"status of 401")

    page.goto("/ui/jobs")
    page.wait_for_url(re.compile(r"/ui/signin\?next=(/|%2F)ui(/|%2F)jobs$"))
    sign_in(page, "tas_0000000000000000_not-a-key")
    page.wait_for_selector("#signin-error")
    assert "not valid" in page.inner_text("#signin-error")
    assert not [c for c in page.context.cookies() if c["name"] == SESSION_COOKIE]

    sign_in(page, alpha_key)
    page.wait_for_url("**/ui/jobs")
    page.wait_for_selector(f'#jobs-table [data-job-id="{alpha_job}"]')
    assert page.locator(f'[data-job-id="{beta_job}"]').count() == 0
    assert page.locator("#jobs-table [data-job-id]").count() == 1
    assert "alpha" in page.inner_text("#who")

    (cookie,) = [c for c in page.context.cookies() if c["name"] == SESSION_COOKIE]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert alpha_key.split("_", 2)[2] not in cookie["value"], "the cookie never holds the key"
    assert page.evaluate("document.cookie") == "", "no script can read the session"


def test_a_session_write_needs_the_csrf_token(
    page: Page, guard: Guard, tenants: dict[str, tuple[str, str]]
) -> None:
    (alpha_key, alpha_job), (_, beta_job) = tenants["alpha"], tenants["beta"]
    guard.expect_error(r"status of 403")
    guard.expect_error(rf"status of 404 .*/jobs/{beta_job}/cancel")
    page.goto("/ui/signin")
    sign_in(page, alpha_key)
    page.wait_for_url("**/ui/jobs")

    # The page's own fetches, with the session cookie and without any Authorization header.
    script = """async ([path, header, token]) => {
        const headers = token ? {[header]: token} : {};
        const r = await fetch(path, {method: "POST", headers, credentials: "same-origin"});
        return [r.status, await r.text()];
    }"""

    def post(path: str, token: str | None) -> tuple[int, str]:
        status, body = page.evaluate(script, [path, CSRF_HEADER, token])
        return int(status), str(body)

    status, body = post(f"/jobs/{alpha_job}/cancel", None)
    assert status == 403, body
    assert "CSRF" in body
    status, _ = post(f"/jobs/{alpha_job}/cancel", "forged")
    assert status == 403

    token = page.evaluate("fetch('/session').then((r) => r.json()).then((s) => s.csrf_token)")
    assert token
    status, body = post(f"/jobs/{beta_job}/cancel", token)
    assert status == 404, f"another tenant's job is not there for this session: {body}"
    status, body = post(f"/jobs/{alpha_job}/cancel", token)
    assert status == 200, body
    assert page.evaluate(f"fetch('/jobs/{alpha_job}').then((r) => r.json())")["status"] == (
        "cancelled"
    )

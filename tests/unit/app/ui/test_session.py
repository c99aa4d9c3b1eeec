"""The dashboard's browser session: an API key pasted into the sign-in form becomes a signed
HttpOnly SameSite=Strict cookie that holds the key's id (never its secret); its writes need the
page's CSRF token, other sites' writes are refused, and revoking the key ends the session."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.services.auth import SESSION_COOKIE, Authenticator
from tas.settings import Settings
from tas.store import keys as key_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.unit_of_work import unit_of_work
from tests.helpers.api import make_app, migrated_settings, running_client
from tests.helpers.specs import iris_spec
from tests.unit.app.api.test_authorization import make_key

CSRF = "X-CSRF-Token"
CROSS_SITE = {"Sec-Fetch-Site": "cross-site"}


@dataclass
class Site:
    app: FastAPI
    client: TestClient
    settings: Settings
    key_id: str
    token: str
    admin: str

    @property
    def auth(self) -> Authenticator:
        auth: Authenticator = self.app.state.auth
        return auth

    def bearer(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}


def sign_in(client: TestClient, token: str, next_url: str | None = None) -> httpx.Response:
    data = {"api_key": token} if next_url is None else {"api_key": token, "next": next_url}
    return client.post("/ui/signin", data=data, follow_redirects=False)


def set_cookie_header(r: httpx.Response) -> SimpleCookie:
    header = r.headers.get("set-cookie")
    assert header is not None, r.text
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(header)
    return cookie


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    # A short auth cache: a key revoked behind this process's back ends its sessions quickly.
    settings = migrated_settings(tmp_path, auth_cache_s=0.2)
    key_id, token = make_key(settings, "team-a", ["jobs:read", "jobs:write"], name="browser")
    _, admin = make_key(settings, "ops", ["admin"])
    app = make_app(settings)
    with running_client(app) as client:
        yield Site(app, client, settings, key_id, token, admin)


@pytest.fixture
def signed_in(site: Site) -> str:
    """The session cookie's value (the client's jar holds it too)."""
    r = sign_in(site.client, site.token)
    assert r.status_code == 303, r.text
    return site.client.cookies[SESSION_COOKIE]


def csrf(site: Site) -> str:
    r = site.client.get("/session")
    assert r.status_code == 200, r.text
    token = r.json()["csrf_token"]
    assert isinstance(token, str) and token
    return token


def test_signing_in_sets_a_strict_httponly_cookie_without_the_key(site: Site) -> None:
    r = sign_in(site.client, site.token, "/ui/jobs/abc?x=1")
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/jobs/abc?x=1"
    morsel = set_cookie_header(r)[SESSION_COOKIE]
    assert morsel["httponly"] is True
    assert morsel["samesite"].lower() == "strict"
    assert morsel["path"] == "/"
    assert not morsel["secure"], "plain http: a Secure cookie would never come back"
    assert int(morsel["max-age"]) == int(site.settings.session_hours * 3600)
    secret = site.token.split("_", 2)[2]
    assert secret not in morsel.value and site.token not in r.headers["set-cookie"]
    assert morsel.value.startswith(site.key_id + ".")


def test_the_cookie_is_secure_over_https(site: Site) -> None:
    with TestClient(site.app, base_url="https://testserver") as client:
        r = sign_in(client, site.token)
    assert r.status_code == 303
    assert set_cookie_header(r)[SESSION_COOKIE]["secure"] is True


def test_the_session_answers_the_tenant_and_a_csrf_token(site: Site, signed_in: str) -> None:
    body = site.client.get("/session").json()
    assert body["tenant"] == "team-a"
    assert body["key_id"] == site.key_id
    assert body["scopes"] == ["jobs:read", "jobs:write"]
    assert body["open"] is False
    assert body["csrf_token"] == site.auth.csrf_token(signed_in)
    # A bearer caller has no cookie to protect: no token.
    site.client.cookies.clear()
    assert site.client.get("/session", headers=site.bearer()).json()["csrf_token"] is None


def test_a_session_write_needs_the_csrf_token(site: Site, signed_in: str) -> None:
    token = csrf(site)
    missing = site.client.post("/jobs", json=iris_spec())
    assert missing.status_code == 403, missing.text
    assert "X-CSRF-Token" in missing.json()["detail"]
    wrong = site.client.post("/jobs", json=iris_spec(), headers={CSRF: token[:-2] + "xx"})
    assert wrong.status_code == 403, wrong.text
    # Another session's token is as wrong as a made-up one.
    other = site.auth.csrf_token(site.auth.open_session(site.token, 1)[0])
    assert site.client.post("/jobs", json=iris_spec(), headers={CSRF: other}).status_code == 403
    assert site.client.get("/jobs").json()["items"] == [], "a refused write wrote nothing"

    created = site.client.post("/jobs", json=iris_spec(), headers={CSRF: token})
    assert created.status_code == 201, created.text
    invalid = site.client.post("/jobs", json={"name": "x"}, headers={CSRF: token})
    assert invalid.status_code == 422, "past the CSRF check, to validation"
    assert site.client.get(f"/jobs/{created.json()['id']}").status_code == 200


def test_a_cross_site_write_is_refused_even_with_the_token(site: Site, signed_in: str) -> None:
    token = csrf(site)
    r = site.client.post("/jobs", json=iris_spec(), headers={CSRF: token, **CROSS_SITE})
    assert r.status_code == 403, r.text
    # A read from another site's page is no change: it passes (the browser keeps the answer
    # from that page anyway).
    assert site.client.get("/jobs", headers=CROSS_SITE).status_code == 200


def test_a_cross_site_write_is_refused_while_the_server_is_open(tmp_path: Path) -> None:
    """No key exists, so every caller is the default tenant: a page on any site could otherwise
    make a local user's browser submit jobs."""
    app = make_app(migrated_settings(tmp_path))
    with running_client(app) as client:
        assert client.get("/session").json()["open"] is True
        r = client.post("/jobs", json=iris_spec(), headers=CROSS_SITE)
        assert r.status_code == 403, r.text
        assert client.get("/jobs").json()["items"] == []
        for same in ({"Sec-Fetch-Site": "same-origin"}, {}):
            assert client.post("/jobs", json=iris_spec(), headers=same).status_code == 201


def test_a_tampered_or_expired_cookie_is_a_401(site: Site, signed_in: str) -> None:
    key_id, expires, nonce, signature = signed_in.split(".")
    auth = site.auth
    past = str(int(time.time()) - 1)
    later = str(int(time.time()) + 10 * 24 * 3600)
    forged = [
        f"{key_id}.{expires}.{nonce}.{signature[:-2]}AA",  # a bad signature
        f"{key_id}.{later}.{nonce}.{signature}",  # a longer life, same signature
        f"{'0' * 16}.{expires}.{nonce}.{signature}",  # another key's id
        f"{key_id}.{past}.{nonce}.{auth._sign('session', key_id, past, nonce)}",  # expired
        f"{key_id}.x.{nonce}.{auth._sign('session', key_id, 'x', nonce)}",  # no expiry
        "garbage",
        "a.b.c.d.e",
    ]
    for value in forged:
        site.client.cookies.clear()
        site.client.cookies.set(SESSION_COOKIE, value)
        r = site.client.get("/jobs")
        assert r.status_code == 401, (value, r.text)
        assert "sign in again" in r.json()["detail"]
        assert site.client.get("/session").status_code == 401
    site.client.cookies.clear()
    site.client.cookies.set(SESSION_COOKIE, signed_in)
    assert site.client.get("/jobs").status_code == 200


def test_revoking_the_key_through_the_api_ends_its_sessions_at_once(
    site: Site, signed_in: str
) -> None:
    assert site.client.get("/jobs").status_code == 200
    r = site.client.delete(f"/keys/{site.key_id}", headers=site.bearer(site.admin))
    assert r.status_code == 200, r.text
    assert site.client.get("/jobs").status_code == 401
    assert site.client.get("/session").status_code == 401


def test_a_key_revoked_elsewhere_ends_its_sessions_within_the_cache_time(
    site: Site, signed_in: str
) -> None:
    """Revoked by another process (the CLI): this one learns it when its cached check ages."""
    assert site.client.get("/jobs").status_code == 200
    engine = make_engine(site.settings.resolved_database_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as s:
            key_store.revoke_key(s, site.key_id)
    finally:
        engine.dispose()
    deadline = time.monotonic() + site.settings.auth_cache_s + 2.0
    while site.client.get("/jobs").status_code == 200:
        assert time.monotonic() < deadline, "the session outlived its key's revocation"
        time.sleep(0.05)
    assert site.client.get("/jobs").status_code == 401
    # Signing in again with the revoked key is refused too.
    assert sign_in(site.client, site.token).status_code == 401


def test_signing_in_with_a_bad_key_shows_the_form_again(site: Site) -> None:
    for bad in ("tas_" + "0" * 16 + "_" + "x" * 43, "not a key", site.token[:-1] + "!", " "):
        r = sign_in(site.client, bad, "/ui/models")
        assert r.status_code == 401, (bad, r.text)
        assert r.headers["content-type"].startswith("text/html")
        assert "that API key is not valid" in r.text
        assert 'id="signin-error"' in r.text
        assert 'value="/ui/models"' in r.text, "the form keeps where to go next"
        assert "set-cookie" not in r.headers
    assert SESSION_COOKIE not in site.client.cookies


def test_a_cross_site_sign_in_is_refused(site: Site) -> None:
    """Another site signing the browser in to a key of its own choosing (login CSRF)."""
    r = site.client.post(
        "/ui/signin", data={"api_key": site.token}, headers=CROSS_SITE, follow_redirects=False
    )
    assert r.status_code == 403
    assert "set-cookie" not in r.headers


@pytest.mark.parametrize(
    "next_url",
    [
        "//evil.example",
        "//evil.example/ui/jobs",
        "https://evil.example/",
        "/\\evil.example",
        "\\\\evil.example",
        "/\t/evil.example",
        "javascript:alert(1)",
        "ui/jobs",
        "",
    ],
)
def test_sign_in_only_redirects_to_this_server(site: Site, next_url: str) -> None:
    r = sign_in(site.client, site.token, next_url)
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/jobs"
    page = site.client.get("/ui/signin", params={"next": next_url})
    assert 'name="next" value="/ui/jobs"' in page.text


def test_signing_out_needs_the_csrf_field_and_clears_the_cookie(site: Site, signed_in: str) -> None:
    token = csrf(site)
    for form in ({}, {"csrf_token": "nope"}):
        r = site.client.post("/ui/signout", data=form, follow_redirects=False)
        assert r.status_code == 403, form
        assert "set-cookie" not in r.headers
        assert site.client.get("/jobs").status_code == 200, "still signed in"
    r = site.client.post("/ui/signout", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/ui/signin")
    morsel = set_cookie_header(r)[SESSION_COOKIE]
    assert morsel.value == "" and morsel["max-age"] == "0"
    assert morsel["path"] == "/"
    assert SESSION_COOKIE not in site.client.cookies
    assert site.client.get("/jobs").status_code == 401


def test_reads_work_with_a_cookie_and_with_a_bearer_header(site: Site, signed_in: str) -> None:
    token = csrf(site)
    job_id = site.client.post("/jobs", json=iris_spec(), headers={CSRF: token}).json()["id"]
    by_cookie = site.client.get(f"/jobs/{job_id}")
    assert by_cookie.status_code == 200
    by_key = site.client.get(f"/jobs/{job_id}", headers=site.bearer())
    assert by_key.status_code == 200
    assert by_cookie.json()["id"] == by_key.json()["id"] == job_id
    site.client.cookies.clear()
    assert site.client.get(f"/jobs/{job_id}", headers=site.bearer()).status_code == 200
    # A bearer write needs no CSRF token: a header is no ambient credential.
    assert site.client.post("/jobs", json=iris_spec(), headers=site.bearer()).status_code == 201
    assert site.client.get("/jobs").status_code == 401


def test_a_session_sees_only_its_tenant(site: Site, signed_in: str) -> None:
    _, other = make_key(site.settings, "team-b", ["jobs:read", "jobs:write"])
    theirs = site.client.post("/jobs", json=iris_spec(), headers=site.bearer(other)).json()["id"]
    assert site.client.get(f"/jobs/{theirs}").status_code == 404
    assert site.client.get("/jobs").json()["items"] == []

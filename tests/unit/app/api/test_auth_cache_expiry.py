"""A key that expires while this process holds it in its auth cache: the cache keeps a checked
key (and a browser session made from it) for TAS_AUTH_CACHE_S at most, and never past the key's
own expiry, so the key is refused the moment it expires, not up to a cache lifetime later."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from fastapi.testclient import TestClient

from app.services.auth import SESSION_COOKIE, Authenticator
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.orm import ApiKey, utcnow
from tas.store.unit_of_work import unit_of_work
from tests.helpers.api import make_app, migrated_settings, running_client
from tests.unit.app.api.test_authorization import make_key

#: The key's life: long enough for the requests before its expiry on a busy machine, far
#: shorter than the cache's.
LIFE_S = 3.0
CACHE_S = 60.0
UNKNOWN = "tas_" + "1" * 16 + "_" + "y" * 43


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def with_cookie(client: TestClient, cookie: str | None) -> TestClient:
    client.cookies.clear()
    if cookie is not None:
        client.cookies.set(SESSION_COOKIE, cookie)
    return client


def test_a_cached_key_and_its_session_are_refused_as_soon_as_the_key_expires(
    tmp_path: Path,
) -> None:
    settings = migrated_settings(tmp_path, auth_cache_s=CACHE_S)
    app = make_app(settings)
    with running_client(app) as client:
        auth: Authenticator = app.state.auth
        # Made once the app runs, so its short life is not spent starting it.
        key_id, token = make_key(settings, "team-a", ["jobs:read"], expires_days=LIFE_S / 86400)
        engine = make_engine(settings.resolved_database_url)
        with unit_of_work(make_sessionmaker(engine)) as s:
            row = s.get(ApiKey, key_id)
            assert row is not None and row.expires_at is not None
            expires_at: datetime = row.expires_at
        engine.dispose()

        unknown = client.get("/jobs", headers=bearer(UNKNOWN))
        assert unknown.status_code == 401
        forged = with_cookie(client, f"{key_id}.9999999999.nonce.signature").get("/jobs")
        assert forged.status_code == 401

        # Accepted, then answered from memory.
        assert with_cookie(client, None).get("/jobs", headers=bearer(token)).status_code == 200
        assert auth.cached(f"Bearer {token}") is not None
        signed_in = client.post("/ui/signin", data={"api_key": token}, follow_redirects=False)
        assert signed_in.status_code == 303, signed_in.text
        cookie = client.cookies[SESSION_COOKIE]
        assert with_cookie(client, cookie).get("/jobs").status_code == 200
        assert auth.cached_session(cookie) is not None
        assert utcnow() < expires_at, "the machine took the key's whole life to get here"

        time.sleep(max(0.0, (expires_at - utcnow()).total_seconds()) + 0.05)

        # Well inside the cache's lifetime, the entries are gone and the database says why.
        assert auth.cached(f"Bearer {token}") is None
        assert auth.cached_session(cookie) is None
        r = with_cookie(client, None).get("/jobs", headers=bearer(token))
        assert (r.status_code, r.json()) == (401, unknown.json())
        ended = with_cookie(client, cookie).get("/jobs")
        assert (ended.status_code, ended.json()) == (401, forged.json())
        assert "sign in again" in ended.json()["detail"]
        # Signing in again with the expired key is refused too.
        again = with_cookie(client, None).post(
            "/ui/signin", data={"api_key": token}, follow_redirects=False
        )
        assert again.status_code == 401
        assert SESSION_COOKIE not in client.cookies

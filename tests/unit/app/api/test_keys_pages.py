"""`GET /keys` pages like every other list: newest first by (created_at, id), a bounded `limit`,
a `cursor` from the last page's `next_cursor`, the `tenant` filter applied to every page."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tas.store import keys as key_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.orm import ApiKey, utcnow
from tas.store.pagination import Order, SortKey, encode_ordered_cursor
from tas.store.unit_of_work import unit_of_work
from tests.helpers.api import make_app, migrated_settings, running_client


@dataclass
class Keys:
    client: TestClient
    admin: dict[str, str]
    #: Every key's id, newest first (the admin's own key included).
    newest_first: list[str]
    tenant_of: dict[str, str]


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[Keys]:
    """The admin's key and six more (four `vision`, two `nlp`), each made a minute after the one
    before, except the fourth and fifth, made in the same instant so their ids break the tie: with
    `limit=3` the third and fourth newest, on either side of the first page's end."""
    settings = migrated_settings(tmp_path, auth_cache_s=0)
    engine = make_engine(settings.resolved_database_url)
    secret = key_store.server_secret(settings)
    start = utcnow() - timedelta(hours=1)
    with unit_of_work(make_sessionmaker(engine)) as s:
        admin, token = key_store.create_key(s, secret, tenant="ops", scopes=["admin"])
        rows = [admin]
        for tenant in ("vision", "nlp", "vision", "vision", "nlp", "vision"):
            rows.append(key_store.create_key(s, secret, tenant=tenant, scopes=["predict"])[0])
        for i, row in enumerate(rows):
            row.created_at = start + timedelta(minutes=i - (i >= 4))
        s.flush()
        order = sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)
        newest_first = [r.id for r in order]
        tenant_of = {r.id: r.tenant for r in rows}
    engine.dispose()
    with running_client(make_app(settings)) as client:
        yield Keys(client, {"Authorization": f"Bearer {token}"}, newest_first, tenant_of)


def walk(k: Keys, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Every item from the first page on, following `next_cursor`; and how many pages it took."""
    items: list[dict[str, Any]] = []
    pages = 0
    cursor = None
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        r = k.client.get("/keys", params=query, headers=k.admin)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"items", "next_cursor"}
        items += body["items"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages


def test_pages_cover_every_key_once_newest_first(keys: Keys) -> None:
    items, pages = walk(keys, limit=3)
    assert [i["id"] for i in items] == keys.newest_first and pages == 3
    assert all("key" not in i and "secret_hash" not in i for i in items)
    whole = keys.client.get("/keys", headers=keys.admin).json()
    assert [i["id"] for i in whole["items"]] == keys.newest_first
    assert whole["next_cursor"] is None, "the default page (50) holds all seven"


def test_the_tenant_filter_pages_too(keys: Keys) -> None:
    items, pages = walk(keys, tenant="vision", limit=3)
    vision = [i for i in keys.newest_first if keys.tenant_of[i] == "vision"]
    assert [i["id"] for i in items] == vision and len(vision) == 4 and pages == 2
    assert {i["tenant"] for i in items} == {"vision"}
    assert walk(keys, tenant="nobody", limit=3) == ([], 1)


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        "../x",
        # A NUL in the id, which PostgreSQL would refuse as a query parameter.
        base64.urlsafe_b64encode(b"2024-01-01T00:00:00+00:00|\x00ab").decode(),
        # A cursor of another order (`GET /jobs?sort=`): not one this list issues.
        encode_ordered_cursor(Order("name", (SortKey(ApiKey.name, False, str),)), ["a"]),
    ],
)
def test_a_foreign_cursor_is_a_422_naming_the_cursor(keys: Keys, cursor: str) -> None:
    r = keys.client.get("/keys", params={"cursor": cursor}, headers=keys.admin)
    assert r.status_code == 422, r.text
    assert [d["loc"] for d in r.json()["detail"]] == [["query", "cursor"]]


@pytest.mark.parametrize("limit", ["0", "201", "-1", "x"])
def test_a_limit_outside_1_to_200_is_a_422(keys: Keys, limit: str) -> None:
    r = keys.client.get("/keys", params={"limit": limit}, headers=keys.admin)
    assert r.status_code == 422, r.text
    assert [d["loc"] for d in r.json()["detail"]] == [["query", "limit"]]
    assert keys.client.get("/keys?limit=200", headers=keys.admin).status_code == 200

"""`GET /jobs?sort=` over HTTP: the order, paging with the cursor it issues, and the 422s (an
unknown sort lists the allowed ones; a cursor from another sort names `cursor`). Every order's
exact paging on both databases: tests/unit/tas/store/test_job_orders.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.unit.app.api.test_jobs_lifecycle import detail_at, set_job, submit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def all_pages(client: TestClient, **params: Any) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        r = client.get("/jobs", params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        seen += [j["id"] for j in r.json()["items"]]
        if (cursor := r.json()["next_cursor"]) is None:
            return seen


def test_sorts_page_exactly_and_filters_still_apply(client: TestClient) -> None:
    a = submit(client, name="b-one")["id"]
    b = submit(client, name="a-two")["id"]
    c = submit(client, name="c-three")["id"]
    d = submit(client, name="a-two")["id"]  # ties with b on name
    for i, job_id in enumerate([a, b, c, d]):
        set_job(client, job_id, created_at=T0 + timedelta(hours=i))
    set_job(client, a, status="succeeded", started_at=T0, finished_at=T0 + timedelta(seconds=90))
    set_job(client, c, status="failed", started_at=T0, finished_at=T0 + timedelta(seconds=5))
    set_job(client, d, status="running", started_at=T0)

    assert all_pages(client, limit=1) == [d, c, b, a]  # the default is unchanged
    assert all_pages(client, sort="-created_at", limit=3) == [d, c, b, a]
    assert all_pages(client, sort="created_at", limit=1) == [a, b, c, d]
    assert all_pages(client, sort="name", limit=1) == [d, b, a, c]  # ties: newest first
    assert all_pages(client, sort="-name", limit=2) == [c, a, d, b]
    assert all_pages(client, sort="status", limit=1) == [d, b, c, a]
    assert all_pages(client, sort="-status", limit=1) == [a, c, b, d]
    assert all_pages(client, sort="duration", limit=1) == [c, a, d, b]  # unfinished last
    assert all_pages(client, sort="-duration", limit=1) == [a, c, d, b]
    assert all_pages(client, sort="name", name="a-", limit=1) == [d, b]
    assert all_pages(client, sort="-duration", status="queued,running", limit=1) == [d, b]


@pytest.mark.parametrize("sort", ["best", "Name", "name ", "--name", "created"])
def test_an_unknown_sort_is_422_listing_the_allowed_ones(client: TestClient, sort: str) -> None:
    says = detail_at(client.get("/jobs", params={"sort": sort}), ["query", "sort"])
    assert "allowed: created_at, -created_at, name, -name, status, -status, duration" in says
    assert "32" in detail_at(client.get("/jobs", params={"sort": "x" * 33}), ["query", "sort"])


def test_a_cursor_from_another_sort_is_422_naming_cursor(client: TestClient) -> None:
    for i in range(3):
        submit(client, name=f"n{i}")
    by_name = client.get("/jobs", params={"sort": "name", "limit": 1}).json()["next_cursor"]
    newest = client.get("/jobs", params={"limit": 1}).json()["next_cursor"]
    for params in [
        {"sort": "-name", "cursor": by_name},
        {"cursor": by_name},
        {"sort": "-created_at", "cursor": by_name},
        {"sort": "name", "cursor": newest},
        {"sort": "status", "cursor": "bm8tYmFy"},
    ]:
        assert "cursor" in detail_at(client.get("/jobs", params=params), ["query", "cursor"])
    says = detail_at(client.get("/jobs", params={"cursor": by_name}), ["query", "cursor"])
    assert "sort=name" in says
    ok = client.get("/jobs", params={"sort": "name", "cursor": by_name})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 2

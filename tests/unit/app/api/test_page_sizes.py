"""Every list the API answers is bounded: a route that returns many items takes a `limit` with an
upper bound (found by walking `app.routes`, so a new list route is checked without editing this
test), beyond which it is a 422; the lists that used to come whole (a job's metrics, the models,
a model's versions) page with a `Link` header (rel="next") that leads through all of them."""

from __future__ import annotations

import re
import typing
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import BaseModel

from tas.store.orm import Job, JobStatus, MetricRow, ModelVersion
from tests.helpers.specs import iris_spec

#: List routes whose length is bounded without a `limit`, and why.
BOUNDED_WITHOUT_LIMIT = {
    # A job keeps `checkpoint.keep_last` (at most 100) checkpoints and its best one.
    "/jobs/{job_id}/checkpoints",
    # Live workers and those gone for less than TAS_WORKER_FORGET_S: the deployment's own size.
    "/workers",
}


def _is_list(model: Any) -> bool:
    """A list, or a page of one (a model with a `next_cursor`)."""
    if typing.get_origin(model) is list:
        return True
    return (
        isinstance(model, type)
        and issubclass(model, BaseModel)
        and "next_cursor" in model.model_fields
    )


def _limit_bound(route: APIRoute) -> float | None:
    for param in route.dependant.query_params:
        if param.name == "limit":
            for meta in param.field_info.metadata:
                le = getattr(meta, "le", None)
                if le is not None:
                    return float(le)
    return None


def test_every_list_route_takes_a_bounded_limit(app: FastAPI) -> None:
    lists: dict[str, APIRoute] = {}
    for ctx in iter_route_contexts(app.routes):
        route = ctx.original_route
        if (
            isinstance(route, APIRoute)
            and ctx.path is not None
            and "GET" in (ctx.methods or ())
            and _is_list(route.response_model)
        ):
            lists[ctx.path] = route
    assert {"/jobs", "/datasets", "/models", "/jobs/{job_id}/metrics", "/keys"} <= set(lists)
    unbounded = [
        path
        for path, route in lists.items()
        if path not in BOUNDED_WITHOUT_LIMIT and (_limit_bound(route) or float("inf")) > 10_000
    ]
    assert unbounded == [], "list routes without a bounded limit"


def add_job(client: TestClient, name: str = "t") -> str:
    r = client.post("/jobs", json=iris_spec(name=name))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def db_add(client: TestClient, *rows: Any) -> None:
    with client.app.state.sessions() as s:  # type: ignore[attr-defined]
        s.add_all(rows)
        s.commit()


def follow(client: TestClient, url: str) -> tuple[list[Any], list[str]]:
    """Every page from `url` on, following `Link: <…>; rel="next"`: the items and the URLs."""
    items: list[Any] = []
    urls = []
    next_url: str | None = url
    while next_url is not None:
        urls.append(next_url)
        r = client.get(next_url)
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["versions"] if isinstance(body, dict) else body
        link = r.headers.get("link")
        next_url = None
        if link is not None:
            m = re.fullmatch(r'<([^>]+)>; rel="next"', link)
            assert m, link
            next_url = m.group(1)
    return items, urls


def test_metrics_page_through_every_row(client: TestClient) -> None:
    job_id = add_job(client)
    db_add(
        client,
        *[
            MetricRow(job_id=job_id, epoch=e, step=-1, values={"loss": 1 / (e + 1)})
            for e in range(7)
        ],
        *[
            MetricRow(job_id=job_id, epoch=e, step=s, values={"loss": 1.0})
            for e in range(7)
            for s in (0, 50)
        ],
    )
    whole = client.get(f"/jobs/{job_id}/metrics")
    assert "link" not in whole.headers
    assert [r["epoch"] for r in whole.json()] == list(range(7))

    rows, urls = follow(client, f"/jobs/{job_id}/metrics?limit=3")
    assert rows == whole.json() and len(urls) == 3
    steps, _ = follow(client, f"/jobs/{job_id}/metrics?kind=step&limit=5")
    assert [(r["epoch"], r["step"]) for r in steps] == [(e, s) for e in range(7) for s in (0, 50)]
    every, _ = follow(client, f"/jobs/{job_id}/metrics?kind=all&limit=4")
    assert len(every) == 21

    r = client.get(f"/jobs/{job_id}/metrics?limit=10001")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "limit"]


def versions(client: TestClient, name: str, n: int) -> None:
    jobs = [Job(name=name, spec={"name": name}, status=JobStatus.succeeded.value) for _ in range(n)]
    db_add(client, *jobs)
    db_add(
        client,
        *[
            ModelVersion(name=name, version=i + 1, job_id=j.id, model_dir="/nowhere", card={})
            for i, j in enumerate(jobs)
        ],
    )


def test_models_page_by_name_and_versions_page_newest_first(client: TestClient) -> None:
    for name in ("a", "b", "c", "d", "e"):
        versions(client, name, 2)
    versions(client, "big", 7)
    models, urls = follow(client, "/models?limit=2")
    assert [m["name"] for m in models] == ["a", "b", "big", "c", "d", "e"] and len(urls) == 3
    assert client.get("/models?limit=201").status_code == 422
    assert client.get("/models?cursor=../x").status_code == 422

    listed, urls = follow(client, "/models/big?limit=3")
    assert [v["version"] for v in listed] == [7, 6, 5, 4, 3, 2, 1] and len(urls) == 3
    page = client.get(urls[1]).json()
    assert page["latest_version"] == 7 and page["name"] == "big"
    assert client.get("/models/big?cursor=1").json()["versions"] == []
    assert client.get("/models/nope?cursor=5").status_code == 404
    assert client.get("/models/big?limit=1001").status_code == 422


def test_a_listing_shows_at_most_the_newest_versions_of_each_model(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.api.routes import models as model_routes

    monkeypatch.setattr(model_routes, "LISTED_VERSIONS", 3)
    versions(client, "big", 5)
    [big] = client.get("/models").json()
    assert [v["version"] for v in big["versions"]] == [5, 4, 3] and big["latest_version"] == 5

"""Every list the API answers is bounded: a route whose answer is a list, or a document holding one
(a field of its response model: a page's items, a job's predictions, a model's versions), takes a
`limit` with an upper bound (found by walking `app.routes`, so a new list route is checked without
editing this test), beyond which it is a 422, unless the list is bounded by something else written
down below; the lists that used to come whole (a job's metrics and predictions, the models, a
model's versions) page with a `Link` header (rel="next") that leads through all of them."""

from __future__ import annotations

import csv
import io
import re
import types
import typing
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import BaseModel

from app.schemas.jobs import PredictionsOut
from app.services import predictions as prediction_service
from tas.core import predictions
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store.orm import Job, JobStatus, MetricRow, ModelVersion
from tests.helpers.specs import iris_spec

#: Routes answering a bare list whose length is bounded without a `limit`, and why.
BOUNDED_WITHOUT_LIMIT = {
    # A job keeps `checkpoint.keep_last` (at most 100) checkpoints and its best one.
    "/jobs/{job_id}/checkpoints",
    # Live workers and those gone for less than TAS_WORKER_FORGET_S: the deployment's own size.
    "/workers",
}

#: List fields of a response model bounded without a `limit`, and why.
BOUNDED_FIELDS = {
    # One entry per run, and a run only begins when a worker claims the job: at most
    # max_attempts (TAS_MAX_ATTEMPTS) runs per submit or resume, plus preemptions (a stopping
    # worker's, never a caller's). Not a hard bound: each resume of a failed or cancelled job
    # allows more runs, so the list grows with the work workers have done on the job (a run is
    # seconds of a worker at the least), never with one request.
    "JobOut.attempt_log",
    # The pipeline's stages, a row per stage per run: bounded as attempt_log is.
    "JobOut.stages",
    # A search runs at most max_trials (at most 1,000; a grid's default, its size, at most
    # MAX_GRID = 10,000, refused at create beyond it).
    "SearchOut.trials",
    # The caller's scopes: a subset of the fixed set of scopes.
    "SessionOut.scopes",
}


def _is_list(annotation: Any) -> bool:
    """A list, or an optional one."""
    if typing.get_origin(annotation) is list or annotation is list:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(annotation))
    return False


def _list_fields(model: Any) -> list[str]:
    """The lists a route's answer is or holds: `[]` for a bare list, `Model.field` for each list
    field of a response model (a page's items included)."""
    if _is_list(model):
        return ["[]"]
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return [
        f"{model.__name__}.{name}"
        for name, field in model.model_fields.items()
        if _is_list(field.annotation)
    ]


def _limit_bound(route: APIRoute) -> float | None:
    for param in route.dependant.query_params:
        if param.name == "limit":
            for meta in param.field_info.metadata:
                le = getattr(meta, "le", None)
                if le is not None:
                    return float(le)
    return None


def _list_routes(app: FastAPI) -> dict[str, tuple[APIRoute, list[str]]]:
    lists: dict[str, tuple[APIRoute, list[str]]] = {}
    for ctx in iter_route_contexts(app.routes):
        route = ctx.original_route
        if isinstance(route, APIRoute) and ctx.path is not None and "GET" in (ctx.methods or ()):
            fields = _list_fields(route.response_model)
            if fields:
                lists[ctx.path] = (route, fields)
    return lists


def test_every_list_route_takes_a_bounded_limit(app: FastAPI) -> None:
    lists = _list_routes(app)
    assert {
        "/jobs",
        "/datasets",
        "/models",
        "/models/{name}",
        "/jobs/{job_id}/metrics",
        "/jobs/{job_id}/predictions",
        "/jobs/{job_id}/logs",
        "/keys",
    } <= set(lists)
    unbounded = []
    for path, (route, fields) in lists.items():
        if path in BOUNDED_WITHOUT_LIMIT:
            continue
        rest = [f for f in fields if f not in BOUNDED_FIELDS]
        # One `limit` pages one list: a route holding two unbounded lists needs more.
        if rest and ((_limit_bound(route) or float("inf")) > 10_000 or len(rest) > 1):
            unbounded.append((path, rest))
    assert unbounded == [], "list routes without a bounded limit"
    # Every exemption still names a list some route answers (none left behind by a rename).
    answered = {f for _, fields in lists.values() for f in fields}
    assert set(BOUNDED_FIELDS) <= answered


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


def finished_job(client: TestClient, settings: Settings, n: int) -> tuple[str, dict[str, Any]]:
    """A succeeded job whose evaluate stage wrote `n` val predictions, as the worker writes them."""
    job = Job(
        name="p",
        spec={"name": "p"},
        status=JobStatus.succeeded.value,
        result={"evaluation": {"split": "val"}, "weights": {"keep": "last"}},
    )
    db_add(client, job)
    rng = np.random.default_rng(0)
    arrays = {
        "index": rng.permutation(10 * n)[:n].astype(np.int64),
        "label": rng.integers(0, 3, n).astype(np.int64),
        "predicted": rng.integers(0, 3, n).astype(np.int64),
        "probability": rng.random(n).astype(np.float32),
        "class_names": np.asarray(["cat", "dog", "emu"]),
    }
    root = job_store.job_dir(settings.resolved_artifact_dir, job.id, tenant=job.tenant)
    predictions.write_all(root, {"val": arrays})
    return job.id, arrays


def csv_rows(text: str) -> list[dict[str, Any]]:
    """CSV rows in the JSON rows' shape, to compare the two formats."""
    return [
        {
            "index": int(r["index"]),
            "label": int(r["label"]),
            "class_name": r["class_name"] or None,
            "predicted": int(r["predicted"]),
            "predicted_class_name": r["predicted_class_name"] or None,
            "probability": float(r["probability"]),
            "correct": r["correct"] == "true",
        }
        for r in csv.DictReader(io.StringIO(text))
    ]


def test_predictions_page_through_every_row_in_order(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id, arrays = finished_job(client, settings, 25)
    url = f"/jobs/{job_id}/predictions"
    whole = client.get(url)  # 25 rows: one default page of 1,000
    assert whole.status_code == 200, whole.text
    assert "link" not in whole.headers
    body = whole.json()
    assert (body["split"], body["count"], body["offset"], body["limit"]) == ("val", 25, 0, 1000)
    assert body["weights"] == {"keep": "last"}
    PredictionsOut.model_validate(body)  # encoded without the model: still the documented shape
    expected = [
        {
            "index": int(i),
            "label": int(t),
            "class_name": ["cat", "dog", "emu"][t],
            "predicted": int(p),
            "predicted_class_name": ["cat", "dog", "emu"][p],
            "probability": float(prob),
            "correct": bool(t == p),
        }
        for i, t, p, prob in zip(
            arrays["index"],
            arrays["label"],
            arrays["predicted"],
            arrays["probability"],
            strict=True,
        )
    ]
    assert body["predictions"] == expected

    pages: list[dict[str, Any]] = []
    next_url: str | None = f"{url}?limit=7"
    while next_url is not None:
        r = client.get(next_url)
        assert r.status_code == 200, r.text
        page = r.json()
        assert page["count"] == 25 and len(page["predictions"]) <= 7
        pages.append(page)
        link = r.headers.get("link")
        next_url = None
        if link is not None:
            m = re.fullmatch(r'<([^>]+)>; rel="next"', link)
            assert m, link
            next_url = m.group(1)
    assert [p["offset"] for p in pages] == [0, 7, 14, 21]
    # Each row once, in the split's order.
    assert [row for p in pages for row in p["predictions"]] == expected

    # The default page is bounded too: past it, a Link to the next.
    monkeypatch.setattr(prediction_service, "DEFAULT_PAGE", 10)
    r = client.get(url)
    assert len(r.json()["predictions"]) == 10
    assert r.headers["link"] == f'<{url}?split=val&limit=10&offset=10>; rel="next"'
    end = client.get(f"{url}?offset=25")
    assert end.json()["predictions"] == [] and end.json()["count"] == 25
    assert "link" not in end.headers

    for bad in ("limit=0", "limit=10001", "offset=-1"):
        r = client.get(f"{url}?{bad}")
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"][0]["loc"] == ["query", bad.split("=")[0]]


def test_predictions_csv_streams_the_same_rows(client: TestClient, settings: Settings) -> None:
    job_id, _ = finished_job(client, settings, 23)
    url = f"/jobs/{job_id}/predictions"
    rows = client.get(f"{url}?limit=100").json()["predictions"]
    whole = client.get(f"{url}?format=csv")
    assert whole.status_code == 200 and whole.headers["content-type"].startswith("text/csv")
    assert "link" not in whole.headers  # a download: the whole split, not a page
    assert "content-length" not in whole.headers  # streamed
    assert csv_rows(whole.text) == rows
    assert csv_rows(client.get(f"{url}?format=csv&offset=20").text) == rows[20:]
    # With a limit, CSV pages as JSON does (the header on every page).
    first = client.get(f"{url}?format=csv&limit=10")
    assert csv_rows(first.text) == rows[:10]
    assert first.headers["link"] == f'<{url}?split=val&limit=10&offset=10&format=csv>; rel="next"'
    last = client.get(f"{url}?format=csv&limit=10&offset=20")
    assert csv_rows(last.text) == rows[20:] and "link" not in last.headers

"""Every request body is bounded (TAS_MAX_JSON_BODY_KB) before the app reads it, but those of the
routes that bound their own (uploads, /predict): walked over `app.routes`, every route with a JSON
body refuses one whose Content-Length is over the limit before a byte is pulled, and one without a
Content-Length (chunked) once the bytes streamed in pass it, each a 413 naming the limit and its
setting, also when the server has keys and none was sent; a body at the limit is parsed as
before. The uploads and /predict keep their own, larger limits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import safetensors.torch
from fastapi import FastAPI, params
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.types import Message, Receive, Scope, Send

from app.api.body_limit import BodyLimit
from tas.core.models import build_model
from tas.core.spec import ModelSpec
from tas.settings import Settings
from tas.store import keys as key_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.unit_of_work import unit_of_work
from tests.helpers.api import make_app, migrated_settings, running_client
from tests.helpers.specs import iris_spec
from tests.helpers.streamed import StreamedBody, send_streamed

KiB = 1024
LIMIT = 4 * KiB
CHUNK = 512
SETTING = "TAS_MAX_JSON_BODY_KB"

#: The routes with a JSON body when this was written: the walk must find each of them (and any
#: route added since), so a walk that finds nothing cannot pass.
KNOWN = {
    ("POST", "/jobs"),
    ("PATCH", "/jobs/{job_id}"),
    ("POST", "/jobs/{job_id}/resume"),
    ("POST", "/jobs/{job_id}/clone"),
    ("POST", "/searches"),
    ("PUT", "/models/{name}/aliases/{alias}"),
    ("POST", "/keys"),
}
#: Path parameters: a thing that exists nowhere (the bound comes before any lookup).
PATH_VALUES = {
    "job_id": "0" * 32,
    "name": "no-such-model",
    "alias": "production",
    "search_id": "0" * 32,
    "key_id": "0" * 16,
}
JSON = {"content-type": "application/json"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A 4 KiB bound, so small bodies pass it; /predict keeps its default 32 MiB."""
    return migrated_settings(tmp_path, max_json_body_kb=LIMIT // KiB)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return make_app(settings)


def json_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every route whose body FastAPI reads and parses as JSON."""
    found = []
    for ctx in iter_route_contexts(app.routes):
        route = ctx.original_route
        if not isinstance(route, APIRoute) or route.body_field is None:
            continue
        if isinstance(route.body_field.field_info, params.Form):
            continue
        path = ctx.path  # with its router's prefix
        assert path is not None
        found += [(m, path) for m in sorted(route.methods or ())]
    return sorted(found)


def fill(path: str) -> str:
    for name, value in PATH_VALUES.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"no value for a path parameter of {path}: add one to PATH_VALUES"
    return path


def spaces_object(total: int) -> StreamedBody:
    """A JSON object's `total` bytes, `{` then spaces then `}`, in CHUNK-sized pieces."""
    return StreamedBody(total - 2, head=b"{", tail=b"}", filler=b" ", chunk=CHUNK)


def padded(body: bytes, size: int) -> bytes:
    """`body` (a JSON object) with spaces before its closing brace, `size` bytes in all."""
    assert body.endswith(b"}") and len(body) <= size
    return body[:-1] + b" " * (size - len(body)) + b"}"


def detail(r: httpx.Response) -> str:
    return str(r.json()["detail"])


def test_the_walk_finds_every_route_with_a_json_body(app: FastAPI) -> None:
    assert set(json_routes(app)) >= KNOWN, json_routes(app)


def test_a_content_length_over_the_limit_is_refused_before_a_byte_is_read(app: FastAPI) -> None:
    for method, path in json_routes(app):
        body = spaces_object(LIMIT + 1)
        headers = {**JSON, "content-length": str(LIMIT + 1)}
        r = send_streamed(app, method, fill(path), body, headers)
        where = f"{method} {path}"
        assert r.status_code == 413, (where, r.text)
        assert detail(r) == (
            f"the body is {LIMIT + 1:,} bytes; the limit is {LIMIT:,} bytes (4 KiB, {SETTING})"
        ), where
        assert body.pulled == 0, where


def test_a_chunked_body_is_refused_once_past_the_limit(app: FastAPI) -> None:
    for method, path in json_routes(app):
        body = spaces_object(64 * LIMIT)
        r = send_streamed(app, method, fill(path), body, JSON)
        where = f"{method} {path}"
        assert r.status_code == 413, (where, r.text)
        assert f"the body passed {LIMIT:,} bytes while streaming in" in detail(r), where
        assert SETTING in detail(r), where
        assert body.pulled <= LIMIT + CHUNK, (where, body.pulled)  # not one piece more


def test_a_body_at_the_limit_is_parsed_as_before(app: FastAPI) -> None:
    with running_client(app) as c:
        for method, path in json_routes(app):
            where = f"{method} {path}"
            small = c.request(method, fill(path), content=b"{}", headers=JSON)
            full = c.request(method, fill(path), content=padded(b"{}", LIMIT), headers=JSON)
            assert small.status_code != 413, (where, small.text)
            assert (full.status_code, full.json()) == (small.status_code, small.json()), where
        spec = httpx.Request("POST", "/", json=iris_spec()).content
        job = c.post("/jobs", content=padded(spec, LIMIT), headers=JSON)
        over = c.post("/jobs", content=padded(spec, LIMIT + 1), headers=JSON)
    assert job.status_code == 201, job.text
    assert job.json()["spec"]["name"] == "t"
    assert over.status_code == 413 and SETTING in detail(over), over.text


def test_a_keyed_server_refuses_a_large_body_before_the_missing_key(
    app: FastAPI, settings: Settings
) -> None:
    """The body is read before the key is checked (FastAPI reads it first): the bound comes first
    too, so a caller without a key gets its 413 having cost nothing."""
    engine = make_engine(settings.resolved_database_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as s:
            key_store.create_key(
                s, key_store.server_secret(settings), tenant="team-a", scopes=["jobs:write"]
            )
    finally:
        engine.dispose()
    large = spaces_object(64 * LIMIT)
    r = send_streamed(app, "POST", "/jobs", large, {**JSON, "content-length": str(64 * LIMIT)})
    assert r.status_code == 413 and SETTING in detail(r), r.text
    assert large.pulled == 0
    chunked = send_streamed(app, "POST", "/jobs", spaces_object(64 * LIMIT), JSON)
    assert chunked.status_code == 413, chunked.text
    with running_client(app) as c:
        small = c.post("/jobs", json=iris_spec())
    assert small.status_code == 401, small.text


def test_a_form_body_is_bounded_too(app: FastAPI) -> None:
    """Not only JSON: any route that reads a body, and has no limit of its own, has this one."""
    with running_client(app) as c:
        r = c.post("/ui/signin", data={"api_key": "x", "next": "/" + "a" * LIMIT})
    assert r.status_code == 413, r.text
    assert SETTING in detail(r)


def csv_bytes(rows: int) -> bytes:
    rng = np.random.default_rng(0)
    lines = ["f1,f2,f3,f4,label"]
    for i in range(rows):
        lines.append(",".join(f"{v:.3f}" for v in rng.normal(size=4) + i % 3) + f",c{i % 3}")
    return ("\n".join(lines) + "\n").encode()


def test_uploads_and_predict_keep_their_own_larger_limits(app: FastAPI) -> None:
    data = csv_bytes(300)
    model = build_model(ModelSpec(arch="mlp", hidden=[256]), (4,), 3)
    weights = safetensors.torch.save({k: v.contiguous() for k, v in model.state_dict().items()})
    predict_body = padded(b'{"model": "no-such-model", "inputs": [[1, 2, 3, 4]]}', 4 * LIMIT)
    assert len(data) > 2 * LIMIT and len(weights) > 2 * LIMIT
    with running_client(app) as c:
        ds = c.post("/datasets", files={"file": ("d.csv", data, "text/csv")})
        w = c.post("/weights", files={"file": ("w.safetensors", weights, "application/x")})
        p = c.post("/predict", content=predict_body, headers=JSON)
    assert ds.status_code == 201, ds.text
    assert w.status_code == 201, w.text
    assert p.status_code == 404, p.text  # read and parsed: the model is what it lacks


def test_every_operation_with_a_body_documents_the_413(app: FastAPI) -> None:
    with running_client(app) as c:
        document = c.get("/openapi.json").json()
    bodies = 0
    for path, item in document["paths"].items():
        for method, op in item.items():
            if op.get("requestBody"):
                bodies += 1
                response = op["responses"].get("413")
                assert response is not None, f"{method.upper()} {path}"
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorOut"
                }
    assert bodies >= len(KNOWN)
    jobs_413 = document["paths"]["/jobs"]["post"]["responses"]["413"]["description"]
    assert "names the limit and its setting" in jobs_413


# The middleware alone, around a bare ASGI app.


def bare(read_after_start: bool) -> Any:
    """An app that reads its whole body, before it answers or (a stream waiting for the client
    to leave) after it has begun to answer, and echoes how many bytes it read."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["endpoint"] = app
        n = 0
        if read_after_start:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            message: Message = await receive()
            n += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        if not read_after_start:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(n).encode()})

    return app


def call(asgi: Any, body: StreamedBody) -> tuple[int, str]:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post("/", content=body)

    try:
        r = asyncio.run(go())
    except Exception as exc:  # the bare app has no handler: the refusal surfaces as raised
        return 413 if getattr(exc, "status_code", None) == 413 else 500, str(exc)
    return r.status_code, r.text


def test_the_middleware_bounds_any_endpoint_but_those_with_their_own_limit() -> None:
    inner = bare(read_after_start=False)
    bounded = BodyLimit(inner, max_bytes=LIMIT, own_limits=())
    assert call(bounded, spaces_object(LIMIT))[0] == 200
    status, text = call(bounded, spaces_object(LIMIT + 1))
    assert status == 413 and SETTING in text, text
    own = BodyLimit(inner, max_bytes=LIMIT, own_limits=(inner,))
    assert call(own, spaces_object(8 * LIMIT)) == (200, str(8 * LIMIT))


def test_a_body_read_after_the_answer_began_is_not_refused() -> None:
    """Once the answer has begun a 413 can no longer be sent: what still reads is a stream
    waiting for the client to leave, and it is left alone."""
    bounded = BodyLimit(bare(read_after_start=True), max_bytes=LIMIT, own_limits=())
    assert call(bounded, spaces_object(8 * LIMIT)) == (200, str(8 * LIMIT))

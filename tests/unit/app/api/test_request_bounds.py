"""The work one request may cause is bounded before it starts: a /predict body's bytes (by its
Content-Length before a byte is read; while it streams in without one), the numbers in its JSON
(before they are parsed), its images' pixels and an upload's images' pixels (from their headers,
before any is decoded). Each refusal is a 413 naming the limit and its setting."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from app.api.routes import predict as predict_route
from app.services import inputs
from tas.settings import Settings
from tests.helpers.api import make_app, migrated_settings, running_client
from tests.helpers.images import b64, png
from tests.helpers.registry import Registry
from tests.helpers.streamed import StreamedBody, send_streamed

MiB = 1 << 20


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A 1 MiB /predict body, 1,000 numbers and 1,000 pixels per request: small bodies reach them."""
    return migrated_settings(
        tmp_path,
        predict_max_body_mb=1,
        predict_max_values=1_000,
        predict_max_pixels=1_000,
        predict_max_wait_ms=2.0,
    )


def zeros_body(size: int, head: bytes = b"", tail: bytes = b"") -> StreamedBody:
    """`0,0,0,…` (a JSON array's inside) between `head` and `tail`."""
    return StreamedBody(size, head=head, tail=tail)


def post_streamed(app: FastAPI, body: StreamedBody, headers: dict[str, str]) -> httpx.Response:
    return send_streamed(app, "POST", "/predict", body, headers)


def detail(r: httpx.Response) -> str:
    return str(r.json()["detail"])


def test_content_length_over_the_limit_is_refused_before_a_byte_is_read(
    settings: Settings,
) -> None:
    body = zeros_body(8 * MiB, head=b'{"model": "m", "inputs": [', tail=b"0]}")
    length = 8 * MiB + len(body.head) + len(body.tail)
    r = post_streamed(
        make_app(settings),
        body,
        {"content-type": "application/json", "content-length": str(length)},
    )
    assert r.status_code == 413, r.text
    assert f"the body is {length:,} bytes" in detail(r)
    assert "the limit is 1,048,576 bytes (1 MiB, TAS_PREDICT_MAX_BODY_MB)" in detail(r)
    assert body.pulled == 0


def test_chunked_body_is_refused_once_past_the_limit(settings: Settings) -> None:
    body = zeros_body(8 * MiB, head=b'{"model": "m", "inputs": [', tail=b"0]}")
    r = post_streamed(make_app(settings), body, {"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert "passed 1,048,576 bytes while streaming in" in detail(r)
    assert "TAS_PREDICT_MAX_BODY_MB" in detail(r)
    assert body.pulled <= 1 * MiB + 64 * 1024 + len(body.head)  # not one chunk more


def test_chunked_multipart_is_refused_once_past_the_limit(settings: Settings) -> None:
    head = (
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    body = zeros_body(8 * MiB, head=head, tail=b"\r\n--b--\r\n")
    r = post_streamed(make_app(settings), body, {"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413, r.text
    assert "TAS_PREDICT_MAX_BODY_MB" in detail(r)
    assert body.pulled <= 1 * MiB + 64 * 1024 + len(head)


def test_the_upload_limit_bounds_predict_too_and_is_named(tmp_path: Path) -> None:
    settings = migrated_settings(tmp_path, max_upload_mb=1, predict_max_body_mb=32)
    body = zeros_body(2 * MiB)
    r = post_streamed(make_app(settings), body, {"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert "(1 MiB, TAS_MAX_UPLOAD_MB)" in detail(r)


def test_a_body_at_the_limit_is_read(settings: Settings, registry: Registry) -> None:
    registry.add("tab", input_shape=(3,))
    body = b'{"model": "tab", "inputs": [[1, 2, 3]]}'
    padded = body[:-1] + b" " * (MiB - len(body)) + b"}"  # exactly 1 MiB
    with running_client(make_app(settings)) as c:
        r = c.post("/predict", content=padded, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_numbers_are_counted_before_the_body_is_parsed(
    settings: Settings, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.add("tab", input_shape=(3,))
    with running_client(make_app(settings)) as c:
        ok = c.post("/predict", json={"model": "tab", "inputs": [[1, 2, 3]] * 333})  # 999
        assert ok.status_code == 200, ok.text
        parsed: list[bytes] = []
        real_loads = inputs.orjson.loads
        monkeypatch.setattr(
            inputs.orjson, "loads", lambda b: parsed.append(b) or real_loads(b), raising=True
        )
        r = c.post("/predict", json={"model": "tab", "inputs": [[1, 2, 3]] * 334})  # 1,002
    assert r.status_code == 413, r.text
    assert "up to 1,003 values; at most 1,000" in detail(r)  # commas + 1: the fields' one too
    assert "TAS_PREDICT_MAX_VALUES" in detail(r)
    assert parsed == []


def test_a_large_body_is_parsed_off_the_event_loop(
    settings: Settings, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.add("tab", input_shape=(3,))
    threads: list[str] = []
    real = inputs.parse_json

    def parse(body: bytes, **kw: Any) -> inputs.PredictCall:
        threads.append(threading.current_thread().name)
        return real(body, **kw)

    monkeypatch.setattr(inputs, "parse_json", parse)
    monkeypatch.setattr(predict_route, "PARSE_INLINE_BYTES", 64)
    with running_client(make_app(settings)) as c:
        small = c.post("/predict", json={"model": "tab", "inputs": [[1, 2, 3]]})
        large = c.post("/predict", json={"model": "tab", "inputs": [[1, 2, 3]] * 20})
    assert small.status_code == 200 and large.status_code == 200, (small.text, large.text)
    small_thread, large_thread = threads
    assert large_thread != small_thread  # the loop's own thread parses only the small body
    assert "worker" in large_thread.lower(), large_thread


def test_many_rows_by_feature_name_are_made_an_array_off_the_event_loop(
    settings: Settings, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.add("tab", input_shape=(2,), feature_names=["a", "b"])
    threads: list[str] = []
    real = inputs.records_array

    def records_array(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(inputs, "records_array", records_array)
    monkeypatch.setattr(predict_route, "RECORDS_INLINE", 3)
    with running_client(make_app(settings)) as c:
        few = c.post("/predict", json={"model": "tab", "inputs": [{"a": 1, "b": 2}] * 3})
        many = c.post("/predict", json={"model": "tab", "inputs": [{"a": 1, "b": 2}] * 4})
    assert few.status_code == 200 and many.status_code == 200, (few.text, many.text)
    assert few.json()["predictions"][0] == many.json()["predictions"][0]
    few_thread, many_thread = threads
    assert many_thread != few_thread and "worker" in many_thread.lower(), threads


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kw: object) -> None:
        raise AssertionError("an image was decoded before the pixels were counted")

    monkeypatch.setattr(inputs, "decode_image", refuse)


def test_predict_images_pixels_are_counted_from_headers_before_decoding(
    settings: Settings, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.add("img")
    small = png(np.zeros((30, 30)))  # 900 pixels: under the 1,000 alone, not two together
    big = png(np.zeros((40, 40)))  # 1,600 pixels: over on its own
    with running_client(make_app(settings)) as c:
        assert c.post("/predict", json={"model": "img", "images": [b64(small)]}).status_code == 200
        _no_decoding(monkeypatch)
        two = c.post("/predict", json={"model": "img", "images": [b64(small), b64(small)]})
        one = c.post("/predict", json={"model": "img", "images": [b64(big)]})
        form = c.post(
            "/predict",
            data={"model": "img"},
            files=[
                ("file", ("a.png", small, "image/png")),
                ("file", ("b.png", small, "image/png")),
            ],
        )
    for r in (two, one, form):
        assert r.status_code == 413, r.text
        assert "TAS_PREDICT_MAX_PIXELS" in detail(r) and "1000" in detail(r), r.text
    assert "reached at 'images[1]', 30×30" in detail(two)
    assert "'b.png'" in detail(form)
    assert two.json()["detail"][0]["loc"] == ["body", "images", 1]


def test_a_small_png_of_many_pixels_is_refused_by_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 5000×5000 PNG of one colour is a few KB of base64 and took the API 3 s and ~670 MB to
    decode; the default total (4 Mi pixels) refuses it from its header."""
    settings = migrated_settings(tmp_path)
    Registry(settings).add("img")
    bomb = png(np.zeros((5000, 5000)))
    assert len(bomb) < 100_000
    _no_decoding(monkeypatch)
    with running_client(make_app(settings)) as c:
        r = c.post("/predict", json={"model": "img", "images": [b64(bomb)]})
    assert r.status_code == 413, r.text
    assert "5000×5000 = 2.5e7 pixels" in detail(r) and "TAS_PREDICT_MAX_PIXELS" in detail(r)

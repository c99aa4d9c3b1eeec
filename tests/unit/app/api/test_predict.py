"""/predict: every input form gives the model's own answer; every bad input is a 4xx that says what
is expected, never a 500."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from tests.helpers.images import b64, png
from tests.helpers.registry import IMAGE_SHAPE, Registry


def probs(r: Any) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.array([p["probabilities"] for p in r.json()["predictions"]])


def test_json_inputs_match_the_model(client: TestClient, registry: Registry) -> None:
    m = registry.add("img")
    x = np.random.default_rng(0).random((5, *IMAGE_SHAPE), dtype=np.float32)
    r = client.post("/predict", json={"model": "img", "inputs": x.tolist()})
    body = r.json()
    assert body["model"] == {"name": "img", "version": 1, "job_id": m.job_id}
    expected = torch.softmax(m.reference(x), dim=1).numpy()
    np.testing.assert_allclose(probs(r), expected, atol=1e-6)
    pred = body["predictions"][0]
    assert pred["label"] == int(expected[0].argmax()) and pred["class_name"] == f"c{pred['label']}"
    # one-channel images may also come as (N, H, W)
    r2 = client.post("/predict", json={"model": m.job_id, "inputs": x[:, 0].tolist()})
    np.testing.assert_allclose(probs(r2), expected, atol=1e-6)


def test_tabular_and_regression(client: TestClient, registry: Registry) -> None:
    m = registry.add("reg", input_shape=(3,), output="identity", out_dim=1)
    x = [[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]]
    r = client.post("/predict", json={"model": "reg:1", "inputs": x})
    assert r.status_code == 200, r.text
    values = [p["value"] for p in r.json()["predictions"]]
    np.testing.assert_allclose(values, m.reference(np.array(x))[:, 0].numpy(), atol=1e-6)


def test_base64_images_png_and_jpeg_resized_and_grey(
    client: TestClient, registry: Registry
) -> None:
    m = registry.add("img")
    rng = np.random.default_rng(1)
    x = rng.random((2, 6, 6))
    r = client.post("/predict", json={"model": "img", "images": [b64(png(a)) for a in x]})
    # the server decodes to [0, 1] exactly as this does: pixel / 255 of the 8-bit image
    q = np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8).astype(np.float32) / 255
    expected = torch.softmax(m.reference(q[:, None]), dim=1).numpy()
    np.testing.assert_allclose(probs(r), expected, atol=1e-5)
    # a data URL, a JPEG, a bigger RGB image: all accepted, converted to 6×6 grey
    big_rgb = png(rng.random((24, 30, 3)))
    jpeg = png(x[0], fmt="JPEG")
    r = client.post(
        "/predict",
        json={
            "model": "img",
            "images": ["data:image/png;base64," + b64(png(x[0])), b64(jpeg), b64(big_rgb)],
        },
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 3
    np.testing.assert_allclose(probs(r)[0], expected[0], atol=1e-5)


def test_multipart_image_file(client: TestClient, registry: Registry) -> None:
    registry.add("img")
    x = np.random.default_rng(2).random((6, 6))
    via_json = client.post("/predict", json={"model": "img", "images": [b64(png(x))]})
    r = client.post(
        "/predict",
        data={"model": "img", "top_k": "2"},
        files={"file": ("x.png", png(x), "image/png")},
    )
    np.testing.assert_allclose(probs(r), probs(via_json), atol=1e-7)
    assert len(r.json()["predictions"][0]["top_k"]) == 2
    two = client.post(
        "/predict",
        data={"model": "img"},
        files=[("file", ("a.png", png(x), "image/png")), ("file", ("b.png", png(x), "image/png"))],
    )
    assert len(probs(two)) == 2


def test_top_k(client: TestClient, registry: Registry) -> None:
    registry.add("img", out_dim=5)
    x = np.random.default_rng(3).random((2, *IMAGE_SHAPE)).tolist()
    r = client.post("/predict", json={"model": "img", "inputs": x, "top_k": 3})
    for pred in r.json()["predictions"]:
        top = pred["top_k"]
        assert top[0]["label"] == pred["label"] and len(top) == 3
        ps = [t["probability"] for t in top]
        assert ps == sorted(ps, reverse=True)
        assert ps == sorted(pred["probabilities"], reverse=True)[:3]
        assert top[0]["class_name"] == f"c{pred['label']}"


BAD_JSON: list[tuple[Any, int, str]] = [
    ({"model": "img", "inputs": [[1.0, 2.0, 3.0]]}, 422, "(N, 1, 6, 6)"),
    ({"model": "img", "inputs": [[[1.0] * 6] * 5]}, 422, "received (1, 5, 6)"),
    ({"model": "img", "inputs": [[[1.0] * 6] * 5 + [[1.0] * 5]]}, 422, "same shape"),
    ({"model": "img", "inputs": [[[None] * 6] * 6]}, 422, "NaN or infinite"),
    ({"model": "img", "inputs": [[[1e39] * 6] * 6]}, 422, "NaN or infinite"),
    ({"model": "img", "inputs": [[["a"] * 6] * 6]}, 422, "numeric"),
    ({"model": "img", "inputs": [{"a": 1}]}, 422, "no feature names"),
    ({"model": "img", "inputs": []}, 422, "non-empty"),
    ({"model": "img", "inputs": 3}, 422, "non-empty"),
    ({"model": "img"}, 422, "exactly one of inputs or images"),
    ({"model": "img", "inputs": [[0]], "images": ["x"]}, 422, "exactly one"),
    ({"inputs": [[0]]}, 422, "field required"),
    ({"model": 3, "inputs": [[0]]}, 422, "a string"),
    ({"model": "img", "inputs": [[0]], "extra": 1}, 422, "unknown field"),
    ({"model": "img", "inputs": [[0]], "top_k": 0}, 422, "top_k"),
    ({"model": "img", "inputs": [[0]], "top_k": True}, 422, "top_k"),
    ({"model": "img", "images": ["not base64!"]}, 422, "base64"),
    ({"model": "img", "images": [b64(b"\x89PNG\r\n\x1a\n garbage")]}, 422, "PNG or JPEG"),
    ({"model": "img", "images": [b64(b"GIF89a......")]}, 422, "PNG or JPEG"),
    ({"model": "img", "images": [3]}, 422, "base64"),
    ({"model": "img", "images": []}, 422, "non-empty"),
    ({"model": "img", "inputs": [[[[0.0] * 6] * 6]] * 65}, 413, "at most 64"),
    ({"model": "img", "images": ["AAAA"] * 65}, 413, "at most 64"),
    ({"model": "nope", "inputs": [[0]]}, 404, "not found"),
    ({"model": "img:7", "inputs": [[0]]}, 404, "not found"),
    ({"model": "img:x", "inputs": [[0]]}, 404, "not found"),
    ({"model": "img@prod", "inputs": [[0]]}, 404, "not found"),
    ({"model": "f" * 32, "inputs": [[0]]}, 404, "not found"),
    ({"model": "../../etc/passwd", "inputs": [[0]]}, 404, "not found"),
    ({"model": "tab", "images": [b64(png(np.zeros((6, 6))))]}, 422, "not images"),
    ({"model": "reg", "inputs": [[0, 0, 0]], "top_k": 2}, 422, "classification"),
]


@pytest.mark.parametrize(("body", "code", "says"), BAD_JSON)
def test_bad_input_is_a_4xx_that_says_why(
    client: TestClient, registry: Registry, body: Any, code: int, says: str
) -> None:
    registry.add("img")
    registry.add("tab", input_shape=(3,))
    registry.add("reg", input_shape=(3,), output="identity", out_dim=1)
    r = client.post("/predict", json=body)
    assert r.status_code == code, r.text
    assert says in r.text


def test_job_that_has_not_succeeded_is_409(client: TestClient, registry: Registry) -> None:
    from tas.store.orm import JobStatus

    for status in (JobStatus.queued, JobStatus.running, JobStatus.failed):
        job_id = registry.job("pending", status)
        r = client.post("/predict", json={"model": job_id, "inputs": [[0]]})
        assert r.status_code == 409 and status.value in r.text


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b"{not json", {"content-type": "application/json"}),
        (b'{"model": "img", "inputs": [[NaN]]}', {"content-type": "application/json"}),
        (b"[1, 2]", {"content-type": "application/json"}),
        (b"", {"content-type": "application/json"}),
    ],
)
def test_unparseable_bodies_are_422(
    client: TestClient, registry: Registry, content: bytes, headers: dict[str, str]
) -> None:
    registry.add("img")
    r = client.post("/predict", content=content, headers=headers)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize(
    "ctype", ["application/x-www-form-urlencoded", "text/plain", "application/octet-stream"]
)
def test_neither_json_nor_multipart_is_415_naming_the_header(
    client: TestClient, registry: Registry, ctype: str
) -> None:
    registry.add("img")
    r = client.post("/predict", content=b"model=img", headers={"content-type": ctype})
    assert r.status_code == 415, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["header", "content-type"]
    assert "Content-Type: application/json" in error["msg"] and repr(ctype) in error["msg"]
    assert "multipart/form-data" in error["msg"]


def test_multipart_rejections(client: TestClient, registry: Registry) -> None:
    registry.add("img")
    img = png(np.zeros((6, 6)))
    cases = [
        ({"model": "img"}, {"file": ("x.png", b"corrupt", "image/png")}, 422),
        ({"model": "img"}, None, 422),
        ({}, {"file": ("x.png", img, "image/png")}, 422),
        ({"model": "img", "other": "1"}, {"file": ("x.png", img, "image/png")}, 422),
        ({"model": "img", "top_k": "many"}, {"file": ("x.png", img, "image/png")}, 422),
        ({"model": "nope"}, {"file": ("x.png", img, "image/png")}, 404),
    ]
    for data, files, code in cases:
        if files is None:  # a multipart body with no file part
            r = client.post(
                "/predict",
                content=b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nimg\r\n--b--\r\n',
                headers={"content-type": "multipart/form-data; boundary=b"},
            )
        else:
            r = client.post("/predict", data=data, files=files)
        assert r.status_code == code, (data, r.text)


def test_body_over_the_upload_limit_is_413(registry: Registry, settings: Any) -> None:
    from app.main import create_app

    app = create_app(settings.model_copy(update={"max_upload_mb": 1}), reaper=False)
    with TestClient(app) as c:
        r = c.post(
            "/predict",
            content=b'{"model": "img", "inputs": [' + b"0," * 600_000 + b"0]}",
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 413, r.text


def test_openapi_documents_the_body(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert {"model", "inputs", "images", "top_k"} <= set(
        body["application/json"]["schema"]["properties"]
    )
    paths = set(schema["paths"])
    assert "/models/{name}/aliases/{alias}" in paths
    assert "/models/{name}/versions/{version}/download" in paths

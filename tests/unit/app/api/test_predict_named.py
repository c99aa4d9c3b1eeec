"""/predict by name: tabular rows keyed by the dataset's feature names, and a bad image called by its
own name (its multipart file name, or "images[i]"), never by a Python object's repr."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.helpers.images import b64, png
from tests.helpers.registry import Registry

FEATURES = ["age", "sex", "bmi"]


def values(r: Any) -> list[float]:
    assert r.status_code == 200, r.text
    return [p["value"] for p in r.json()["predictions"]]


def only_error(r: Any, status: int = 422) -> dict[str, Any]:
    assert r.status_code == status, r.text
    [error] = r.json()["detail"]
    return dict(error)


@pytest.fixture
def reg(registry: Registry) -> Registry:
    registry.add(
        "reg", input_shape=(3,), output="identity", out_dim=1, feature_names=list(FEATURES)
    )
    return registry


def test_rows_by_feature_name_equal_the_same_rows_as_lists(
    client: TestClient, reg: Registry
) -> None:
    rows = [[59.0, 1.0, 32.1], [48.0, 0.0, 21.6]]
    as_lists = client.post("/predict", json={"model": "reg", "inputs": rows})
    # keys in any order: the card's column order decides
    named = [{"bmi": r[2], "age": r[0], "sex": r[1]} for r in rows]
    by_name = client.post("/predict", json={"model": "reg", "inputs": named})
    np.testing.assert_allclose(values(by_name), values(as_lists), atol=1e-6)
    ints = client.post(
        "/predict", json={"model": "reg", "inputs": [{"age": 59, "sex": 1, "bmi": 32}]}
    )
    assert len(values(ints)) == 1


def test_a_missing_column_is_422_naming_it_and_the_expected_ones(
    client: TestClient, reg: Registry
) -> None:
    rows = [{"age": 1, "sex": 0, "bmi": 2}, {"age": 59, "sex": 1}]
    error = only_error(client.post("/predict", json={"model": "reg", "inputs": rows}))
    assert error["loc"] == ["body", "inputs", 1]
    assert "missing column 'bmi'" in error["msg"]
    assert "expected: age, sex, bmi" in error["msg"]


def test_an_unknown_column_is_422_suggesting_the_nearest(client: TestClient, reg: Registry) -> None:
    rows = [{"age": 59, "sex": 1, "bni": 3.0}]
    error = only_error(client.post("/predict", json={"model": "reg", "inputs": rows}))
    assert error["loc"] == ["body", "inputs", 0]
    assert "unknown column 'bni' (did you mean 'bmi'?)" in error["msg"]
    assert "missing column 'bmi'" in error["msg"]
    extra = [{"age": 59, "sex": 1, "bmi": 3.0, "zip": 12345}]
    error = only_error(client.post("/predict", json={"model": "reg", "inputs": extra}))
    assert "unknown column 'zip'" in error["msg"] and "expected: age, sex, bmi" in error["msg"]


@pytest.mark.parametrize("bad", ["59", None, True, [1]])
def test_a_value_that_is_not_a_number_is_422_naming_the_column(
    client: TestClient, reg: Registry, bad: Any
) -> None:
    rows = [{"age": bad, "sex": 1, "bmi": 3.0}]
    error = only_error(client.post("/predict", json={"model": "reg", "inputs": rows}))
    assert error["loc"] == ["body", "inputs", 0, "age"]
    assert "column 'age' must be a number" in error["msg"]


@pytest.mark.parametrize(
    "inputs",
    [
        [{"age": 1, "sex": 0, "bmi": 2}, [1, 0, 2]],
        [[1, 0, 2], {"age": 1, "sex": 0, "bmi": 2}],
    ],
)
def test_mixed_lists_and_objects_are_refused(
    client: TestClient, reg: Registry, inputs: list[Any]
) -> None:
    error = only_error(client.post("/predict", json={"model": "reg", "inputs": inputs}))
    assert "mixes lists and objects" in error["msg"]


def test_rows_by_name_for_a_model_without_feature_names(
    client: TestClient, registry: Registry
) -> None:
    registry.add("plain", input_shape=(3,), output="identity", out_dim=1)
    r = client.post("/predict", json={"model": "plain", "inputs": [{"a": 1, "b": 2, "c": 3}]})
    error = only_error(r)
    assert "no feature names" in error["msg"] and "[3]" in error["msg"]


CORRUPT = b"\x89PNG\r\n\x1a\n" + b"\0" * 40


def test_a_corrupt_base64_image_is_named_by_its_index(
    client: TestClient, registry: Registry
) -> None:
    registry.add("img")
    good = b64(png(np.zeros((6, 6))))
    r = client.post("/predict", json={"model": "img", "images": [good, good, good, b64(CORRUPT)]})
    error = only_error(r)
    assert error["loc"] == ["body", "images", 3]
    assert "'images[3]'" in error["msg"] and "not a PNG or JPEG" in error["msg"]
    assert "BytesIO" not in r.text and "0x" not in r.text


def test_a_corrupt_multipart_file_is_named_by_its_file_name(
    client: TestClient, registry: Registry
) -> None:
    registry.add("img")
    good = png(np.zeros((6, 6)))
    truncated = png(np.random.default_rng(0).random((6, 6)), fmt="JPEG")[:120]
    for name, data in [("cat.png", CORRUPT), ("dog.jpg", truncated), ("notes.png", b"hello")]:
        r = client.post(
            "/predict",
            data={"model": "img"},
            files=[("file", ("ok.png", good, "image/png")), ("file", (name, data, "image/png"))],
        )
        error = only_error(r)
        assert error["loc"] == ["body", "images", 1], r.text
        assert repr(name) in error["msg"], r.text
        assert "BytesIO" not in r.text and "0x" not in r.text


def test_one_column_rows_and_the_bad_value_found_by_row_and_column() -> None:
    from app.services.inputs import records_array
    from tas.errors import InvalidInput

    arr = records_array([{"a": 1.5}, {"a": 2}], ["a"], (1,))
    assert arr.tolist() == [[1.5], [2.0]]
    with pytest.raises(InvalidInput) as info:
        records_array([{"a": 1, "b": 2}, {"a": 3, "b": "4"}], ["a", "b"], (2,))
    [(loc, msg)] = info.value.problems
    assert loc == ("body", "inputs", 1, "b") and 'got "4"' in msg

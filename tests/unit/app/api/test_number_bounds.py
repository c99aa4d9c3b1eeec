"""Numbers a client can send that no column, generator or clock can hold: each is a 422 naming the
field and the bound, refused at the request, never a 500 from the driver or a job that fails later
in the worker."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tas.core.spec import SEED_MAX
from tas.store.registry import MAX_VERSION

BEYOND_INT64 = 2**70
SPEC: dict[str, Any] = {
    "name": "bounds",
    "dataset": {"name": "iris"},
    "model": {"arch": "mlp", "hidden": [8]},
    "training": {"epochs": 1},
}


def _spec(**parts: dict[str, Any]) -> dict[str, Any]:
    return {**SPEC, **{k: {**SPEC[k], **v} for k, v in parts.items()}}


@pytest.mark.parametrize(
    ("spec", "loc", "says"),
    [
        (_spec(training={"seed": BEYOND_INT64}), ["training", "seed"], str(SEED_MAX)),
        (_spec(training={"seed": -1}), ["training", "seed"], "greater than or equal to 0"),
        (_spec(dataset={"split_seed": BEYOND_INT64}), ["dataset", "split_seed"], str(SEED_MAX)),
        (_spec(training={"weight_decay": 1e308}), ["training", "weight_decay"], "equal to 1"),
    ],
)
def test_spec_numbers_beyond_their_range_are_422(
    client: TestClient, spec: dict[str, Any], loc: list[str], says: str
) -> None:
    r = client.post("/jobs", json=spec)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", *loc] and says in error["msg"]
    assert client.get("/jobs").json()["items"] == []


@pytest.mark.parametrize("number", [b"1e999", b"-1e999"])
def test_a_non_finite_number_is_422_and_echoed_as_json(client: TestClient, number: bytes) -> None:
    """`1e999` parses as infinity: refused (not a job with an endless time limit), and the error
    that echoes it is still valid JSON (strict JSON has no infinity)."""
    body = (
        b'{"name": "bounds", "dataset": {"name": "iris"}, "model": {"arch": "mlp"},'
        b' "training": {"epochs": 1, "max_minutes": ' + number + b"}}"
    )
    r = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "training", "max_minutes"]
    assert error["msg"] == "Input should be a finite number"
    assert error["input"] in ("inf", "-inf")


def test_a_model_version_beyond_int64_is_422_not_a_driver_overflow(client: TestClient) -> None:
    ref = f"digits:{BEYOND_INT64}"
    r = client.post("/predict", json={"model": ref, "inputs": [[0.0] * 4]})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "model"]
    assert str(MAX_VERSION) in r.json()["detail"][0]["msg"]

    r = client.put("/models/digits/aliases/production", json={"version": BEYOND_INT64})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "version"]

    r = client.post("/jobs", json=_spec(model={"init_from": ref}))
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "model", "init_from"]

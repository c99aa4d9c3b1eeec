"""The request bodies OpenAPI documents are the bodies the routes parse.

The upload forms and /predict are parsed by hand (streamed, or with orjson and numpy) rather than
by pydantic, but from the documented models: every documented field is accepted and no other, and
the documented choices and bounds are the ones the parser and the core enforce. These fail when the
two drift apart (a field, a format or a bound added on one side only)."""

from __future__ import annotations

import base64
import dataclasses
import io
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import BaseModel

from app.schemas.datasets import DatasetForm, WeightsForm
from app.schemas.predict import PredictForm, PredictRequest
from app.services import datasets as dataset_service
from app.services import inputs
from app.services.uploads import text_fields
from tas.errors import InvalidInput

FORMS: dict[str, type[BaseModel]] = {"/datasets": DatasetForm, "/weights": WeightsForm}
CSV = b"x,target\n1,0\n2,1\n"


def _property(model: type[BaseModel], name: str) -> dict[str, Any]:
    """A nullable field's schema without its null branch."""
    prop: dict[str, Any] = model.model_json_schema()["properties"][name]
    return next((p for p in prop.get("anyOf", []) if p.get("type") != "null"), prop)


def _problems(r: Any) -> list[dict[str, Any]]:
    detail = r.json().get("detail")
    return detail if isinstance(detail, list) else []


def _png() -> str:
    buf = io.BytesIO()
    Image.new("L", (4, 4), 128).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# ---------------------------------------------------------------------------------------------
# The upload forms.


@pytest.mark.parametrize(("path", "form"), FORMS.items())
def test_an_unknown_form_field_is_refused_naming_the_documented_ones(
    client: TestClient, path: str, form: type[BaseModel]
) -> None:
    r = client.post(path, files={"file": ("a.csv", CSV)}, data={"colour": "red"})
    assert r.status_code == 422, r.text
    allowed = ", ".join(form.model_fields)  # `file` first, then the small fields
    assert _problems(r) == [
        {
            "loc": ["body", "colour"],
            "msg": f"unknown form field; allowed: {allowed}",
            "type": "value_error",
        }
    ]


@pytest.mark.parametrize(("path", "form"), FORMS.items())
def test_every_documented_form_field_is_parsed(
    client: TestClient, path: str, form: type[BaseModel]
) -> None:
    assert "file" in form.model_fields
    for name in text_fields(form):
        r = client.post(path, files={"file": ("a.csv", CSV)}, data={name: "x"})
        assert not [p for p in _problems(r) if "unknown form field" in p["msg"]], (name, r.text)


def test_the_dataset_forms_read_options_are_the_cores() -> None:
    options = dataset_service.upload_options({})
    documented = set(text_fields(DatasetForm)) - {"name"}
    assert {f.name for f in dataclasses.fields(options)} == documented


@pytest.mark.parametrize("field", ["format", "task"])
def test_the_documented_choices_are_the_cores(field: str) -> None:
    choices: list[str] = _property(DatasetForm, field)["enum"]
    for value in choices:
        dataset_service.upload_options({field: value})
    with pytest.raises(InvalidInput) as info:
        dataset_service.upload_options({field: "no-such-choice"})
    assert info.value.problems[0][0] == ("body", field)
    assert f"allowed: {', '.join(choices)} (or leave it out)" in info.value.problems[0][1]


@pytest.mark.parametrize("form", FORMS.values())
def test_the_documented_name_length_is_the_checked_one(form: type[BaseModel]) -> None:
    limit: int = _property(form, "name")["maxLength"]
    assert dataset_service.dataset_name("n" * limit, "a.csv") == "n" * limit
    with pytest.raises(InvalidInput) as info:
        dataset_service.dataset_name("n" * (limit + 1), "a.csv")
    assert info.value.problems[0][0] == ("body", "name")


# ---------------------------------------------------------------------------------------------
# /predict.


def test_an_unknown_predict_field_is_refused_naming_the_documented_ones(
    client: TestClient,
) -> None:
    r = client.post("/predict", json={"model": "m", "inputs": [[1.0]], "colour": 1})
    assert r.status_code == 422, r.text
    allowed = ", ".join(PredictRequest.model_fields)
    assert _problems(r) == [
        {
            "loc": ["body", "colour"],
            "msg": f"unknown field; allowed: {allowed}",
            "type": "value_error",
        }
    ]

    r = client.post(
        "/predict", files={"a.png": ("a.png", base64.b64decode(_png()))}, data={"colour": "x"}
    )
    assert r.status_code == 422, r.text
    form_fields = ", ".join(n for n in PredictForm.model_fields if n != "file")
    assert _problems(r)[0]["msg"] == f"unknown form field; allowed: {form_fields}, image files"


def test_every_documented_predict_field_is_parsed() -> None:
    with_inputs = {"model": "m", "inputs": [[1.0, 2.0]], "top_k": 1}
    with_images = {"model": "m", "images": [_png()]}
    assert set(with_inputs) | set(with_images) == set(PredictRequest.model_fields)
    for body in (with_inputs, with_images):
        inputs.parse_json(orjson.dumps(body), max_samples=8)
    form = [(n, "m" if n == "model" else "1") for n in PredictForm.model_fields if n != "file"]
    inputs.parse_form(form, [base64.b64decode(_png())], max_samples=8)


@pytest.mark.parametrize("model", [PredictRequest, PredictForm])
def test_the_documented_top_k_bounds_are_the_checked_ones(model: type[BaseModel]) -> None:
    top_k = _property(model, "top_k")
    low, high = top_k["minimum"], top_k["maximum"]

    def parse(k: int) -> int | None:
        if model is PredictRequest:
            body = orjson.dumps({"model": "m", "inputs": [[1.0]], "top_k": k})
            return inputs.parse_json(body, max_samples=8).top_k
        return inputs.parse_form([("model", "m"), ("top_k", str(k))], [b"png"], max_samples=8).top_k

    assert parse(low) == low and parse(high) == high
    for k in (low - 1, high + 1):
        with pytest.raises(InvalidInput) as info:
            parse(k)
        assert info.value.problems[0] == (
            ("body", "top_k"),
            f"top_k must be an integer from {low} to {high}, or null",
        )

"""Every bounded number and list of the spec is refused outside its bounds with a 422 that names
the field (its `loc`) and the whole allowed range, and the specs the tests submit stay valid."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tas.core.spec import MAX_MINUTES, JobSpec
from tests.helpers.specs import digits_mlp_spec, iris_spec


def errors(body: dict[str, Any]) -> dict[tuple[Any, ...], str]:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(body)
    return {tuple(e["loc"]): e["msg"] for e in caught.value.errors()}


@pytest.mark.parametrize(
    ("part", "loc", "allowed"),
    [
        ({"training": {"epochs": 0}}, ("training", "epochs"), "allowed: 1 to 100,000"),
        ({"training": {"epochs": 100_001}}, ("training", "epochs"), "allowed: 1 to 100,000"),
        (
            {"training": {"batch_size": 2_000_000}},
            ("training", "batch_size"),
            "allowed: 1 to 1,000,000",
        ),
        (
            {"training": {"max_minutes": 0}},
            ("training", "max_minutes"),
            "allowed: above 0, at most 525,600",
        ),
        (
            {"training": {"max_minutes": MAX_MINUTES + 1}},
            ("training", "max_minutes"),
            "allowed: above 0, at most 525,600",
        ),
        ({"model": {"hidden": [8, 0]}}, ("model", "hidden", 1), "allowed: 1 to 65,536"),
        ({"model": {"hidden": [65537]}}, ("model", "hidden", 0), "allowed: 1 to 65,536"),
        ({"model": {"hidden": [8] * 33}}, ("model", "hidden"), "allowed: at most 32 items"),
        (
            {"model": {"arch": "cnn", "channels": [4097]}},
            ("model", "channels", 0),
            "allowed: 1 to 4,096",
        ),
        (
            {"model": {"arch": "cnn", "channels": [4] * 9}},
            ("model", "channels"),
            "allowed: at most 8 items",
        ),
        ({"model": {"dropout": 1.0}}, ("model", "dropout"), "allowed: from 0, below 1"),
        ({"training": {"lr": 11}}, ("training", "lr"), "allowed: above 0, at most 10"),
        ({"checkpoint": {"keep_last": 0}}, ("checkpoint", "keep_last"), "allowed: 1 to 100"),
    ],
)
def test_an_out_of_bounds_value_names_its_field_and_the_allowed_range(
    part: dict[str, Any], loc: tuple[Any, ...], allowed: str
) -> None:
    found = errors(iris_spec(**part))
    assert loc in found, found
    assert found[loc].endswith(allowed), found[loc]


def test_a_bound_error_keeps_pydantic_s_wording() -> None:
    """Clients matching on pydantic's text ("greater than or equal to 1") still find it."""
    msg = errors(iris_spec(training={"epochs": 0}))[("training", "epochs")]
    assert msg.startswith("Input should be greater than or equal to 1; allowed:")


@pytest.mark.parametrize(
    "body",
    [
        iris_spec(),
        digits_mlp_spec("d"),
        iris_spec(model={"hidden": [65536] * 32}),  # the bounds themselves are valid
        iris_spec(training={"epochs": 100_000, "batch_size": 1, "max_minutes": MAX_MINUTES}),
        iris_spec(model={"arch": "cnn", "channels": [4096] * 8}),
        iris_spec(dataset={"name": "digits"}, model={"arch": "resnet18", "pretrained": True}),
    ],
)
def test_valid_specs_stay_valid(body: dict[str, Any]) -> None:
    JobSpec.model_validate(body)

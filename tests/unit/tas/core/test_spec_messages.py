"""How the spec answers a mistake: the nearest field suggested, choices matched whatever their case,
strict types that refuse numbers and booleans sent as strings."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tas.core.spec import JobSpec, ModelSpec, TrainingSpec

BASE: dict[str, Any] = {"name": "ok", "dataset": {"name": "digits"}}


def errors(spec: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(spec)
    return info.value.errors(include_url=False)


@pytest.mark.parametrize(
    ("spec", "loc", "suggested"),
    [
        ({**BASE, "training": {"epcohs": 3}}, ("training", "epcohs"), "epochs"),
        ({**BASE, "training": {"batch_sise": 3}}, ("training", "batch_sise"), "batch_size"),
        ({**BASE, "trainig": {}}, ("trainig",), "training"),
        ({**BASE, "model": {"hiden": [8]}}, ("model", "hiden"), "hidden"),
        (
            {**BASE, "dataset": {"name": "digits", "val_frac": 0.2}},
            ("dataset", "val_frac"),
            "val_fraction",
        ),
        (
            {**BASE, "training": {"early_stopping": {"patiense": 2}}},
            ("training", "early_stopping", "patiense"),
            "patience",
        ),
    ],
)
def test_unknown_field_suggests_the_nearest_at_its_level(
    spec: dict[str, Any], loc: tuple[str, ...], suggested: str
) -> None:
    [error] = errors(spec)
    assert error["loc"] == loc
    assert error["type"] == "extra_forbidden"
    assert f"unknown field {loc[-1]!r} (did you mean {suggested!r}?)" in error["msg"]
    assert "fields here:" in error["msg"]


def test_unknown_field_without_a_near_one_lists_the_fields() -> None:
    [error] = errors({**BASE, "training": {"zzzz": 1}})
    assert "did you mean" not in error["msg"]
    assert "fields here: epochs, batch_size, optimizer, lr" in error["msg"]


def test_every_error_is_kept_beside_the_suggestion() -> None:
    found = errors({**BASE, "training": {"epcohs": 3, "lr": -1.0}, "modle": {}})
    assert {e["loc"] for e in found} == {("training", "epcohs"), ("training", "lr"), ("modle",)}
    lr = next(e for e in found if e["loc"] == ("training", "lr"))
    assert "greater than 0" in lr["msg"]


@pytest.mark.parametrize(
    ("part", "field", "sent", "canonical"),
    [
        ("training", "optimizer", "Adam", "adam"),
        ("training", "optimizer", "SGD", "sgd"),
        ("training", "loss", "Cross_Entropy", "cross_entropy"),
        ("training", "scheduler", "Cosine", "cosine"),
        ("training", "precision", "FP32", "fp32"),
        ("model", "arch", "MLP", "mlp"),
        ("model", "activation", "ReLU", "relu"),
        ("model", "freeze", "Backbone", "backbone"),
        ("resources", "device", "CPU", "cpu"),
    ],
)
def test_choices_match_case_insensitively_and_store_the_canonical_spelling(
    part: str, field: str, sent: str, canonical: str
) -> None:
    spec = JobSpec.model_validate({**BASE, part: {field: sent}})
    assert getattr(getattr(spec, part), field) == canonical
    assert spec.model_dump(mode="json")[part][field] == canonical


def test_dataset_name_matches_case_insensitively() -> None:
    assert JobSpec.model_validate({**BASE, "dataset": {"name": "Digits"}}).dataset.name == "digits"


def test_a_layer_list_for_freeze_is_not_touched() -> None:
    assert ModelSpec.model_validate({"freeze": ["Layer1", "NONE"]}).freeze == ["Layer1", "NONE"]


def test_an_unknown_choice_suggests_the_nearest() -> None:
    [error] = errors({**BASE, "training": {"optimizer": "adma"}})
    assert error["loc"] == ("training", "optimizer")
    assert "unknown optimizer 'adma' (did you mean 'adam'?)" in error["msg"]
    [error] = errors({**BASE, "training": {"precision": "fp8"}})
    assert error["loc"] == ("training", "precision")


@pytest.mark.parametrize(
    ("part", "field", "sent", "kind"),
    [
        ("training", "lr", "0.01", "a number"),
        ("training", "epochs", "10", "an integer"),
        ("training", "batch_size", "64", "an integer"),
        ("dataset", "stratify", "true", "true or false"),
        ("model", "pretrained", "false", "true or false"),
    ],
)
def test_numbers_and_booleans_sent_as_strings_are_refused(
    part: str, field: str, sent: str, kind: str
) -> None:
    spec = {**BASE, part: {**BASE.get(part, {}), field: sent}}
    [error] = errors(spec)
    assert error["loc"] == (part, field)
    assert f"expected {kind}, got the string {sent!r}" in error["msg"]
    assert "unquoted" in error["msg"]


def test_strict_types_still_take_json_integers_for_floats() -> None:
    t = TrainingSpec.model_validate({"lr": 1, "gamma": 1, "max_minutes": 5})
    assert t.lr == 1.0 and isinstance(t.lr, float)
    assert t.max_minutes == 5.0


@pytest.mark.parametrize("value", [1, 0, 1.0])
def test_strict_types_refuse_numbers_for_booleans_and_floats_for_ints(value: Any) -> None:
    with pytest.raises(ValidationError):
        JobSpec.model_validate({**BASE, "dataset": {"name": "digits", "stratify": value}})
    if isinstance(value, float):
        with pytest.raises(ValidationError):
            TrainingSpec.model_validate({"epochs": value})


def test_a_stored_spec_reads_back_unchanged() -> None:
    """The worker re-reads the spec from its JSON dump: strict mode must accept its own output."""
    spec = JobSpec.model_validate(
        {
            **BASE,
            "training": {"optimizer": "Adam", "lr": 1, "early_stopping": {"patience": 2}},
            "model": {"freeze": ["0"], "init_from": "x:1"},
        }
    )
    assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec

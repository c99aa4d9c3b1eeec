"""Each bad spec is rejected with the field to blame (the API turns these into a 422)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tas.core.data.registry import BUILTIN_DATASETS
from tas.core.spec import JobSpec, resolved_monitor, spec_problems

BASE: dict[str, Any] = {"name": "ok", "dataset": {"name": "digits"}}


def merged(**parts: dict[str, Any]) -> dict[str, Any]:
    spec = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for key, value in parts.items():
        spec[key] = {**spec.get(key, {}), **value}
    return spec


@pytest.mark.parametrize(
    ("parts", "loc", "words"),
    [
        ({"training": {"batch_sise": 64}}, ("training", "batch_sise"), "extra"),
        ({"training": {"batch_size": 0}}, ("training", "batch_size"), "greater than or equal to 1"),
        ({"training": {"lr": 0.0}}, ("training", "lr"), "greater than 0"),
        ({"training": {"lr": -0.1}}, ("training", "lr"), "greater than 0"),
        ({"training": {"epochs": 0}}, ("training", "epochs"), "greater than or equal to 1"),
        ({"dataset": {"name": "imagenet"}}, ("dataset", "name"), "unknown dataset 'imagenet'"),
        ({"model": {"arch": "transformer"}}, ("model", "arch"), "unknown arch 'transformer'"),
        ({"training": {"loss": "hinge"}}, ("training", "loss"), "unknown loss 'hinge'"),
        ({"training": {"optimizer": "lbfgs"}}, ("training", "optimizer"), "unknown optimizer"),
        ({"training": {"scheduler": "warmup"}}, ("training", "scheduler"), "unknown scheduler"),
    ],
)
def test_field_errors_name_the_field(
    parts: dict[str, Any], loc: tuple[str, ...], words: str
) -> None:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(merged(**parts))
    errors = info.value.errors()
    assert len(errors) == 1, errors
    assert errors[0]["loc"] == loc
    assert words in (errors[0]["msg"] + " " + errors[0]["type"].replace("_", " ")).replace(
        "forbidden", "extra"
    )


def test_unknown_registry_names_list_what_is_allowed() -> None:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(merged(training={"optimizer": "lbfgs"}))
    assert "allowed: adagrad, adam, adamw, momentum, sgd" in info.value.errors()[0]["msg"]


@pytest.mark.parametrize(
    ("dataset", "parts", "loc", "words"),
    [
        ("digits", {"training": {"loss": "bce"}}, ("training", "loss"), "at most 2 classes"),
        ("digits", {"training": {"loss": "mse"}}, ("training", "loss"), "does not fit"),
        ("diabetes", {"training": {"loss": "cross_entropy"}}, ("training", "loss"), "regression"),
        ("iris", {"model": {"arch": "cnn"}}, ("model", "arch"), "needs image samples"),
        (
            "diabetes",
            {"checkpoint": {"monitor": "val_accuracy"}},
            ("checkpoint", "monitor"),
            "val_mae",
        ),
        (
            "digits",
            {"training": {"early_stopping": {"monitor": "val_f1"}}},
            ("training", "early_stopping", "monitor"),
            "unknown metric 'val_f1'",
        ),
    ],
)
def test_spec_problems_against_the_dataset(
    dataset: str, parts: dict[str, Any], loc: tuple[str, ...], words: str
) -> None:
    spec = JobSpec.model_validate(merged(dataset={"name": dataset}, **parts))
    problems = spec_problems(spec, BUILTIN_DATASETS[dataset].info)
    assert [p[0] for p in problems] == [loc]
    assert words in problems[0][1]


def test_fitting_specs_have_no_problems() -> None:
    for name, parts in [
        ("xor", {"training": {"loss": "bce"}}),
        ("digits", {"model": {"arch": "cnn"}}),
        ("diabetes", {"training": {"loss": "huber"}, "checkpoint": {"monitor": "val_r2"}}),
    ]:
        spec = JobSpec.model_validate(merged(dataset={"name": name}, **parts))
        assert spec_problems(spec, BUILTIN_DATASETS[name].info) == []


def test_monitor_falls_back_to_train_loss_without_validation() -> None:
    info = BUILTIN_DATASETS["digits"].info
    spec = JobSpec.model_validate(BASE)
    assert resolved_monitor(spec, info, has_val=True) == ("val_accuracy", "max")
    assert resolved_monitor(spec, info, has_val=False) == ("train_loss", "min")

"""Tabular datasets carry their column names into the model card, where `/predict` reads rows keyed
by them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tas.core.artifact import read_card
from tas.core.data.formats.upload import info_from_schema
from tas.core.data.registry import BUILTIN_DATASETS
from tests.helpers.pipeline import RunJob


@pytest.mark.parametrize(
    ("name", "loader"),
    [
        ("iris", "load_iris"),
        ("wine", "load_wine"),
        ("breast_cancer", "load_breast_cancer"),
        ("diabetes", "load_diabetes"),
    ],
)
def test_builtin_feature_names_are_scikit_learns(name: str, loader: str) -> None:
    import sklearn.datasets

    info = BUILTIN_DATASETS[name].info
    expected = [str(f) for f in getattr(sklearn.datasets, loader)().feature_names]
    assert info.feature_names == expected
    assert len(expected) == info.input_shape[0]


def test_an_uploads_info_keeps_its_columns() -> None:
    schema = {
        "task": "regression",
        "kind": "tabular",
        "input_shape": [2],
        "feature_names": ["a", "b"],
    }
    assert info_from_schema("up", schema).feature_names == ["a", "b"]
    assert info_from_schema("up", {**schema, "feature_names": None}).feature_names is None


def test_the_card_records_the_feature_names(run_job: RunJob) -> None:
    result = run_job({"name": "t", "dataset": {"name": "iris"}, "training": {"epochs": 1}})
    card = read_card(Path(result.model_dir))
    assert card.feature_names == BUILTIN_DATASETS["iris"].info.feature_names

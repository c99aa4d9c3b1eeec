"""The evaluate stage writes each held-out sample's index in the data, its true label and the
prediction, from the registered weights."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from tas.core import predictions
from tas.core.data.dataset import LoadContext
from tas.core.data.registry import BUILTIN_DATASETS
from tas.core.predictor import Predictor
from tests.helpers.pipeline import RunJob


def test_held_out_predictions_by_source_index(run_job: RunJob, tmp_path: Path) -> None:
    result = run_job(
        {
            "dataset": {"name": "wine", "val_fraction": 0.2, "test_fraction": 0.2},
            "model": {"arch": "mlp", "hidden": [16]},
            "training": {"epochs": 5, "optimizer": "adam", "lr": 1e-2},
        },
        job="wine",
    )
    assert result.predictions == {"val": 36, "test": 36}
    source = BUILTIN_DATASETS["wine"]
    data = source.load(LoadContext(tmp_path / "datasets")).train
    names = source.info.class_names
    val = predictions.read(predictions.path_for(tmp_path / "wine", "val"))
    test = predictions.read(predictions.path_for(tmp_path / "wine", "test"))
    # Disjoint rows of the original data, each with its own true label.
    assert not set(val["index"].tolist()) & set(test["index"].tolist())
    for split in (val, test):
        assert split["index"].dtype == np.int64
        assert np.array_equal(split["label"], data.y[torch.from_numpy(split["index"])].numpy())
        assert ((split["probability"] > 0) & (split["probability"] <= 1)).all()
    # The evaluated split's metrics are these predictions' (the same forward pass).
    ev = result.evaluation
    assert ev is not None and ev["split"] == "test"
    rows = predictions.rows(test)
    assert sum(r["correct"] for r in rows) / len(rows) == ev["metrics"]["accuracy"]
    assert rows[0]["class_name"] == (names[rows[0]["label"]] if names else None)
    # The registered model predicts the same classes for those rows (raw samples in).
    served = Predictor.from_dir(result.model_dir or "").predict(
        data.X[torch.from_numpy(test["index"])].numpy()
    )
    assert [p["label"] for p in served] == test["predicted"].tolist()

    table = list(csv.DictReader(io.StringIO(predictions.to_csv(test))))
    assert [int(r["index"]) for r in table] == test["index"].tolist()
    assert [r["correct"] == "true" for r in table] == [r["correct"] for r in rows]
    assert [float(r["probability"]) for r in table] == [r["probability"] for r in rows]

"""Regression targets are standardised with the training split's statistics for training, and
everything a user reads (epoch metrics, evaluate, per-sample predictions, the predictor) is in the
data's own units."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

from tas.core import predictions
from tas.core.artifact import ModelCard, save_model
from tas.core.data.formats.upload import UploadOptions, load_upload, read_upload
from tas.core.data.prepare import TargetScaler, split_indices
from tas.core.data.registry import BUILTIN_DATASETS
from tas.core.hooks import NullHooks
from tas.core.models import build_model
from tas.core.pipeline import RunContext, run_pipeline
from tas.core.predictor import Predictor
from tas.core.spec import JobSpec, ModelSpec, resolved_target_scaling, spec_problems

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def diabetes_csv(path: Path) -> Path:
    """scikit-learn's diabetes data as a user would upload it: ten features and a target of 25–346."""
    X, y = load_diabetes(return_X_y=True)
    lines = [",".join([*FEATURES, "target"])]
    lines += [",".join(f"{v:.8g}" for v in row) + f",{t:g}" for row, t in zip(X, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_default_mlp_on_the_diabetes_csv_reaches_the_linear_baseline(tmp_path: Path) -> None:
    csv = diabetes_csv(tmp_path / "diabetes.csv")
    parsed = read_upload(csv, csv.name, UploadOptions())
    schema, info = parsed.schema(), parsed.info("diabetes-csv")
    assert info.task == "regression"
    spec = JobSpec.model_validate(
        {
            "name": "diabetes-mlp",
            "dataset": {"id": "upload", "val_fraction": 0.15, "test_fraction": 0.2},
            "model": {"arch": "mlp"},  # the default: two hidden layers of 512
            "training": {
                "optimizer": "adam",
                "lr": 1e-4,
                "batch_size": 32,
                "weight_decay": 1e-3,
                "epochs": 300,
                "early_stopping": {"monitor": "val_loss", "patience": 10},
            },
        }
    )
    result = run_pipeline(
        spec,
        info,
        RunContext(job_dir=tmp_path / "job", datasets_dir=tmp_path, device="cpu"),
        NullHooks(),
        lambda ctx: load_upload(csv, csv.name, schema),
    )
    assert result.status == "succeeded"

    # The same split, outside tas: a plain linear regression on the training part.
    X, y = parsed.arrays.X, parsed.arrays.y
    split = split_indices(y, 0.15, 0.2, spec.dataset.split_seed, spec.dataset.stratify)
    assert split.test is not None
    linear = LinearRegression().fit(X[split.train].numpy(), y[split.train].numpy())
    baseline = r2_score(y[split.test].numpy(), linear.predict(X[split.test].numpy()))
    ev = result.evaluation
    assert ev is not None and ev["split"] == "test"
    assert ev["metrics"]["r2"] >= baseline, (ev["metrics"], baseline)  # 0.549 vs 0.543

    # The per-sample predictions: the test rows by their index in the CSV, in the data's units,
    # giving the evaluate stage's R²; the registered model's predictor gives the same values.
    test = predictions.read(predictions.path_for(tmp_path / "job", "test"))
    assert torch.equal(torch.from_numpy(test["index"]), split.test)
    assert np.allclose(test["value"][:, 0], y[split.test, 0].numpy())
    assert r2_score(test["value"], test["predicted"]) == pytest.approx(ev["metrics"]["r2"], 1e-6)
    predictor = Predictor.from_dir(result.model_dir or "")
    served = [p["value"] for p in predictor.predict(X[split.test].numpy())]
    assert np.allclose(served, test["predicted"][:, 0], rtol=1e-5, atol=1e-3)

    # The card records the transform: the training split's mean and std of the target.
    scaling = predictor.card.target_scaling
    assert scaling is not None and scaling["kind"] == "standard"
    train_y = y[split.train, 0].double()
    assert scaling["mean"][0] == pytest.approx(float(train_y.mean()), rel=1e-5)
    assert scaling["std"][0] == pytest.approx(float(train_y.std(correction=0)), rel=1e-5)

    # The loss is on the scaled targets; the epoch rows' RMSE is in the target's units.
    row = result.model_metrics
    assert row["val_rmse"] == pytest.approx(math.sqrt(row["val_loss"]) * scaling["std"][0], 1e-4)
    assert row["val_mae"] > 10  # targets span 25–346: errors in those units


def test_which_specs_scale_their_targets() -> None:
    def resolved(name: str, **dataset: object) -> str:
        spec = JobSpec.model_validate({"name": "t", "dataset": {"name": name, **dataset}})
        return resolved_target_scaling(spec, BUILTIN_DATASETS[name].info)

    assert resolved("diabetes") == "standard"
    assert resolved("diabetes", target_scaling="none") == "none"
    assert resolved("diabetes", normalize=False) == "none"  # raw inputs: a recipe in raw units
    assert resolved("linear") == "none"  # the seed's raw recipe is kept as it was tuned
    assert resolved("linear", target_scaling="standard") == "standard"
    assert resolved("iris") == "none"
    spec = JobSpec.model_validate(
        {"name": "t", "dataset": {"name": "iris", "target_scaling": "standard"}}
    )
    problems = spec_problems(spec, BUILTIN_DATASETS["iris"].info)
    assert [(where, "regression" in msg) for where, msg in problems] == [
        (("dataset", "target_scaling"), True)
    ]


def test_the_predictor_returns_values_in_the_data_units(tmp_path: Path) -> None:
    arch = ModelSpec(arch="linear")
    model = build_model(arch, (2,), 2)
    head = model[-1]
    assert isinstance(head, torch.nn.Linear)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([1.0, -2.0]))
    scaler = TargetScaler(torch.tensor([100.0, 5.0]), torch.tensor([10.0, 0.5]))
    card = ModelCard(
        arch=arch.model_dump(),
        input_shape=[2],
        task="regression",
        output="identity",
        out_dim=2,
        target_dim=2,
        target_scaling=scaler.to_dict(),
    )
    save_model(tmp_path / "m", model, card)
    out = Predictor.from_dir(tmp_path / "m").predict(np.zeros((3, 2), dtype=np.float32))
    assert [p["value"] for p in out] == [[110.0, 4.0]] * 3
    assert TargetScaler.from_dict(scaler.to_dict()).inverse(
        torch.tensor([[1.0, -2.0]])
    ).tolist() == [[110.0, 4.0]]

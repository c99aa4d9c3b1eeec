"""The evaluate stage's metrics, checked against scikit-learn on random data."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
)
from torch import nn

from tas.core.loop import evaluate
from tas.core.metrics import classification_metrics, evaluate_model, regression_metrics
from tests.helpers.pipeline import RunJob

NAMES = ["ant", "bee", "cat", "dog", "eel", "fox"]


def sk_prf(true: np.ndarray, pred: np.ndarray, k: int, average: str | None) -> tuple:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero_division=0 is explicit: no warning, no NaN
        return precision_recall_fscore_support(
            true, pred, labels=list(range(k)), average=average, zero_division=0
        )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_matches_sklearn_with_a_class_never_predicted(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, n = len(NAMES), 500
    true = rng.integers(0, k - 1, n)  # "fox" (5) never occurs: recall 0, support 0
    pred = np.where(rng.random(n) < 0.6, true, rng.integers(0, k, n))
    pred[pred == 2] = 3  # "cat" is never predicted: precision 0 (not NaN), F1 0
    m = classification_metrics(torch.from_numpy(true), torch.from_numpy(pred), k, NAMES)

    assert m["accuracy"] == pytest.approx(accuracy_score(true, pred), abs=1e-12)
    p, r, f, s = sk_prf(true, pred, k, None)
    assert list(m["per_class"]) == NAMES
    for i, name in enumerate(NAMES):
        row = m["per_class"][name]
        assert row["precision"] == pytest.approx(p[i], abs=1e-12)
        assert row["recall"] == pytest.approx(r[i], abs=1e-12)
        assert row["f1"] == pytest.approx(f[i], abs=1e-12)
        assert row["support"] == s[i]
    assert m["per_class"]["cat"]["precision"] == 0.0 and m["per_class"]["cat"]["f1"] == 0.0
    assert m["per_class"]["fox"]["recall"] == 0.0 and m["per_class"]["fox"]["support"] == 0
    for average in ("macro", "weighted"):
        ap, ar, af, _ = sk_prf(true, pred, k, average)
        assert m[average] == pytest.approx({"precision": ap, "recall": ar, "f1": af}, abs=1e-12)
    cm = m["confusion_matrix"]
    assert cm["labels"] == NAMES
    assert cm["matrix"] == confusion_matrix(true, pred, labels=list(range(k))).tolist()
    assert [r[2] for r in cm["matrix"]] == [0] * k  # no column for "cat"
    json.dumps(m, allow_nan=False)  # JSON as it is: no NaN anywhere


def test_class_keys_without_names_or_with_duplicates() -> None:
    t, p = torch.tensor([0, 1, 2]), torch.tensor([0, 2, 2])
    assert list(classification_metrics(t, p, 3)["per_class"]) == ["0", "1", "2"]
    dup = classification_metrics(t, p, 3, ["a", "a", "b"])
    assert list(dup["per_class"]) == ["0:a", "1:a", "2:b"]


@pytest.mark.parametrize("d", [1, 3])
def test_regression_matches_sklearn(d: int) -> None:
    rng = np.random.default_rng(d)
    true = rng.normal(size=(300, d)) * np.array([1.0, 10.0, 0.1])[:d]
    pred = true + rng.normal(scale=0.5, size=true.shape)
    m = regression_metrics(torch.from_numpy(pred), torch.from_numpy(true))
    assert m["mae"] == pytest.approx(mean_absolute_error(true, pred), rel=1e-12)
    assert m["rmse"] == pytest.approx(math.sqrt(mean_squared_error(true, pred)), rel=1e-12)
    # the flat r2 pools the columns, as the epoch rows' val_r2 does (= variance_weighted)
    assert m["r2"] == pytest.approx(
        r2_score(true, pred, multioutput="variance_weighted"), rel=1e-12
    )
    if d == 1:
        assert "per_target" not in m
        return
    mae = mean_absolute_error(true, pred, multioutput="raw_values")
    rmse = np.sqrt(mean_squared_error(true, pred, multioutput="raw_values"))
    r2 = r2_score(true, pred, multioutput="raw_values")
    assert [c["mae"] for c in m["per_target"]] == pytest.approx(mae, rel=1e-12)
    assert [c["rmse"] for c in m["per_target"]] == pytest.approx(rmse, rel=1e-12)
    assert [c["r2"] for c in m["per_target"]] == pytest.approx(r2, rel=1e-12)
    assert m["mean"]["r2"] == pytest.approx(r2_score(true, pred), rel=1e-12)  # uniform average
    assert m["mean"]["mae"] == pytest.approx(mae.mean(), rel=1e-12)
    assert m["mean"]["rmse"] == pytest.approx(rmse.mean(), rel=1e-12)


def test_a_constant_target_has_an_undefined_r2() -> None:
    m = regression_metrics(torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0], [3.0]]))
    assert math.isnan(m["r2"]) and m["mae"] == 1.5


@pytest.mark.parametrize(
    ("target", "out_dim", "loss_fn"),
    [
        ("index", 4, nn.CrossEntropyLoss()),
        ("binary", 1, nn.BCEWithLogitsLoss()),
        ("value", 2, nn.MSELoss()),
    ],
)
def test_evaluate_model_keeps_the_loop_metrics_exactly(
    target: str, out_dim: int, loss_fn: nn.Module
) -> None:
    """One forward pass, the same loss and flat metrics as the training loop's `evaluate`, with
    batches that do not divide the data."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1000, 5, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, out_dim))
    if target == "index":
        y = torch.randint(0, 4, (1000,), generator=g)
    elif target == "binary":
        y = torch.randint(0, 2, (1000, 1), generator=g).float()
    else:
        y = torch.randn(1000, 2, generator=g)
    ours = evaluate_model(model, X, y, loss_fn, target, batch_size=300, num_classes=4)  # type: ignore[arg-type]
    loop = evaluate(model, X, y, loss_fn, target, batch_size=300)  # type: ignore[arg-type]
    for key, value in loop.items():  # regression: ours subtracts in float64, the loop in float32
        assert ours[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    assert ours["loss"] == loop["loss"]
    if target != "value":
        assert ours["accuracy"] == loop["accuracy"]
        with torch.no_grad():
            out = model(X)
        pred = out.argmax(1) if target == "index" else (out[:, 0] > 0).long()
        k = 4 if target == "index" else 2
        cm = confusion_matrix(y.long().reshape(-1).numpy(), pred.numpy(), labels=list(range(k)))
        assert ours["confusion_matrix"]["matrix"] == cm.tolist()


def test_the_evaluate_stage_reports_them(run_job: RunJob) -> None:
    """breast_cancer with BCE (one logit): the job's evaluation carries per-class metrics keyed by
    the class names and the confusion matrix, beside the flat keys."""
    result = run_job(
        {
            "dataset": {"name": "breast_cancer", "val_fraction": 0.3},
            "model": {"arch": "mlp", "hidden": [16]},
            "training": {"loss": "bce", "optimizer": "adam", "lr": 1e-2, "epochs": 5},
        }
    )
    ev = result.evaluation
    assert ev is not None and ev["split"] == "val"
    m = ev["metrics"]
    # The registered weights are the best epoch's: evaluate reports that epoch's validation row.
    assert result.weights is not None and result.weights["keep"] == "best"
    row = result.model_metrics
    assert row["epoch"] == result.weights["epoch"]
    assert m["accuracy"] == row["val_accuracy"]
    assert m["loss"] == pytest.approx(row["val_loss"], rel=1e-9)
    assert list(m["per_class"]) == ["malignant", "benign"]
    matrix = m["confusion_matrix"]["matrix"]
    assert sum(map(sum, matrix)) == ev["samples"]
    assert [sum(row) for row in matrix] == [
        m["per_class"][c]["support"] for c in ("malignant", "benign")
    ]
    assert m["accuracy"] > 0.9 and m["macro"]["f1"] > 0.9


def test_regression_job_reports_mae_rmse_r2(run_job: RunJob) -> None:
    result = run_job(
        {
            "dataset": {"name": "diabetes"},
            "model": {"arch": "linear"},
            "training": {"optimizer": "adam", "lr": 1.0, "epochs": 30, "batch_size": 32},
        }
    )
    ev = result.evaluation
    assert ev is not None
    assert set(ev["metrics"]) == {"loss", "mae", "rmse", "r2"}
    assert ev["metrics"]["r2"] == pytest.approx(result.model_metrics["val_r2"], rel=1e-6)
    assert ev["metrics"]["r2"] > 0.3

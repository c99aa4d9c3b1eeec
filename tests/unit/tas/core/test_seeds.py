"""Known results of small classic PyTorch examples (a digits MLP, XOR, a linear fit), reproduced
through the service's pipeline (core level): each test says the example's set-up and its result."""

from __future__ import annotations

import numpy as np

from tas.core.predictor import Predictor
from tests.helpers.pipeline import RecordingHooks, RunJob


def test_digits_mlp_adam_reaches_93_percent(run_job: RunJob) -> None:
    """An MLP on scikit-learn's digits: adam, lr 1e-3, 15 epochs, batch 64."""
    hooks = RecordingHooks()
    result = run_job(
        {
            "dataset": {"name": "digits"},
            "model": {"arch": "mlp", "hidden": [64]},
            "training": {"optimizer": "adam", "lr": 1e-3, "epochs": 15, "batch_size": 64},
        },
        hooks=hooks,
    )
    assert result.status == "succeeded"
    assert result.final_metrics["val_accuracy"] >= 0.93
    assert result.evaluation is not None and result.evaluation["split"] == "val"
    assert result.evaluation["metrics"]["accuracy"] == result.final_metrics["val_accuracy"]
    # every stage reported, in order, with JSON-able outputs
    assert [(k, n) for k, n, _ in hooks.stages] == [
        (k, n)
        for n in ("collect", "preprocess", "train", "evaluate", "register")
        for k in ("started", "finished")
    ]
    pre = hooks.outputs("preprocess")
    assert pre["train_samples"] + pre["val_samples"] == 1797 and pre["stratified"] is True
    assert pre["normalization"]["kind"] == "per_channel"
    assert hooks.outputs("register")["sha256"] == result.model_sha256
    assert [r["epoch"] for r in hooks.epochs] == list(range(1, 16))


def test_xor_bce_sgd_learns_xor(run_job: RunJob) -> None:
    """The classic XOR example: 2,500 noisy XOR points, a 2-4-1 tanh MLP, BCE with logits, SGD
    lr 0.1, 100 epochs, batch 128. The example evaluates on 500 fresh points: here a 20 %
    (500-point) validation split."""
    result = run_job(
        {
            "dataset": {"name": "xor", "val_fraction": 0.2},
            "model": {"arch": "mlp", "hidden": [4], "activation": "tanh"},
            "training": {
                "loss": "bce",
                "optimizer": "sgd",
                "lr": 0.1,
                "epochs": 100,
                "batch_size": 128,
                "log_every_steps": 1000,
            },
            "checkpoint": {"every_epochs": 50},
        }
    )
    assert result.evaluation is not None and result.evaluation["samples"] == 500
    assert result.final_metrics["val_accuracy"] >= 0.99
    p = Predictor.from_dir(result.model_dir or "")
    out = p.predict(np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32))
    assert [o["label"] for o in out] == [0, 1, 1, 0]
    assert all(len(o["probabilities"]) == 2 for o in out)  # sigmoid → [1-p, p]


def test_linear_regression_predicts_152(run_job: RunJob) -> None:
    """The classic linear regression example: nn.Linear(3, 1), SGD lr 1e-5, batch 2 over five
    samples, 2,000 epochs; the example's model predicts 151.87 for [73, 80, 75]."""
    result = run_job(
        {
            "dataset": {"name": "linear", "val_fraction": 0.0, "normalize": False},
            "model": {"arch": "linear"},
            "training": {
                "loss": "mse",
                "optimizer": "sgd",
                "lr": 1e-5,
                "epochs": 2000,
                "batch_size": 2,
                "log_every_steps": 100000,
            },
            "checkpoint": {"every_epochs": 1000},
        }
    )
    assert result.status == "succeeded"
    assert result.evaluation is not None and result.evaluation["split"] == "train"
    value = Predictor.from_dir(result.model_dir or "").predict(np.array([[73.0, 80.0, 75.0]]))
    assert abs(value[0]["value"] - 152.0) < 3.0

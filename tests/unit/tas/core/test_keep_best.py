"""The evaluated and registered weights are the best epoch's (by the checkpoint's monitored
metric) whenever there is a validation split, in one attempt and across a resume; "last" and a run
without a validation split keep the last epoch's and say so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.pipeline import RecordingHooks, RunJob

PATIENCE = 2
STEPS_PER_EPOCH = 24  # digits: 1527 training samples at batch size 64


def spec(keep: str = "best") -> dict[str, Any]:
    """Early stopping on the checkpoint's own metric: the best epoch is `PATIENCE` before the end.
    Checkpoints every 50 epochs and only the last kept: the best epoch is saved and kept anyway."""
    return {
        "dataset": {"name": "digits", "val_fraction": 0.15},
        "model": {"arch": "mlp", "hidden": [32]},
        "training": {
            "optimizer": "adam",
            "lr": 1e-2,
            "epochs": 40,
            "batch_size": 64,
            "seed": 1,
            "keep": keep,
            "early_stopping": {"monitor": "val_accuracy", "patience": PATIENCE},
        },
        "checkpoint": {"every_epochs": 50, "keep_last": 1, "monitor": "val_accuracy"},
    }


def weights(directory: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(directory) / "model.safetensors"))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def ckpt_dir(model_dir: str | None, epoch: int, step: int = 0) -> Path:
    return Path(model_dir or "").parent / "checkpoints" / f"ckpt-e{epoch:06d}-s{step:07d}"


def test_the_best_epoch_is_evaluated_and_registered(run_job: RunJob) -> None:
    result = run_job(spec())
    assert result.status == "succeeded" and result.stop_reason == "early_stopped"
    best = result.epochs_run - PATIENCE
    row = next(r for r in result.history if r["epoch"] == best)
    assert result.weights == {
        "keep": "best",
        "epoch": best,
        "metric": "val_accuracy",
        "value": row["val_accuracy"],
    }
    assert best < result.epochs_run and result.best_metrics == row
    # Evaluated on the validation split (no test split): that epoch's own validation metrics.
    ev = result.evaluation
    assert ev is not None and ev["split"] == "val"
    assert ev["metrics"]["accuracy"] == row["val_accuracy"]
    assert ev["metrics"]["loss"] == pytest.approx(row["val_loss"], rel=1e-9)
    assert result.model_metrics == row
    # Registered: exactly the best epoch's checkpoint, saved off the every-50-epochs cadence and
    # kept although it is not among the last one.
    assert same(weights(result.model_dir or ""), weights(ckpt_dir(result.model_dir, best)))
    assert not same(
        weights(result.model_dir or ""), weights(ckpt_dir(result.model_dir, result.epochs_run))
    )
    card = json.loads((Path(result.model_dir or "") / "card.json").read_text())
    assert card["weights"] == result.weights


def test_keep_last_registers_the_last_epoch(run_job: RunJob) -> None:
    result = run_job(spec("last"))
    assert result.weights == {"keep": "last", "epoch": result.epochs_run}
    ev = result.evaluation
    assert ev is not None and ev["metrics"]["accuracy"] == result.final_metrics["val_accuracy"]
    last = ckpt_dir(result.model_dir, result.epochs_run)
    assert same(weights(result.model_dir or ""), weights(last))


def test_a_resume_after_the_best_epoch_registers_it_from_its_checkpoint(run_job: RunJob) -> None:
    """The best epoch was trained by the first attempt: the second reads its verified checkpoint
    and ends with the same registered weights, bit for bit, as an uninterrupted run."""
    reference = run_job(spec(), job="reference")
    best = reference.epochs_run - PATIENCE
    stop_at = (best * STEPS_PER_EPOCH + 4, "preempted")  # epoch best + 1, 3 steps in
    stopped = run_job(spec(), job="victim", hooks=RecordingHooks(stop_at=stop_at))
    assert stopped.status == "preempted" and stopped.checkpoint is not None
    assert (stopped.checkpoint.epoch, stopped.checkpoint.step) == (best, 3)
    resumed = run_job(spec(), job="victim")
    assert resumed.resumed_from is not None and resumed.resumed_from["epoch"] == best
    assert resumed.weights == reference.weights
    assert resumed.model_sha256 == reference.model_sha256
    assert resumed.evaluation == reference.evaluation


def test_a_corrupt_best_checkpoint_falls_back_to_the_last_and_says_why(run_job: RunJob) -> None:
    reference = run_job(spec(), job="reference")
    best = reference.epochs_run - PATIENCE
    stop_at = (best * STEPS_PER_EPOCH + 4, "preempted")
    run_job(spec(), job="victim", hooks=RecordingHooks(stop_at=stop_at))
    target = ckpt_dir(reference.model_dir, best).parents[2] / "victim" / "checkpoints"
    blob = target / f"ckpt-e{best:06d}-s0000000" / "model.safetensors"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    resumed = run_job(spec(), job="victim")
    assert resumed.status == "succeeded"
    w = resumed.weights or {}
    assert (w["keep"], w["epoch"], w["requested"]) == ("last", resumed.epochs_run, "best")
    assert "missing or corrupt" in w["reason"]


def test_without_a_validation_split_the_last_epoch_is_kept(run_job: RunJob) -> None:
    result = run_job(
        {
            "dataset": {"name": "iris", "val_fraction": 0.0},
            "model": {"arch": "mlp", "hidden": [8]},
            "training": {"epochs": 2, "optimizer": "adam", "lr": 1e-2},
        }
    )
    w = result.weights or {}
    assert (w["keep"], w["epoch"], w["requested"]) == ("last", 2, "best")
    assert "no validation split" in w["reason"]

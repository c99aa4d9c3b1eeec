"""Stop mid-epoch, resume, and end bitwise where an uninterrupted run ends (CPU)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tas.core.errors import Stopped, TimeLimitExceeded
from tests.helpers.pipeline import RecordingHooks, RunJob

TIMING = ("epoch_seconds", "samples_per_second")


def spec(scheduler: str) -> dict[str, Any]:
    """Dropout (consumes the RNG every step), adam (optimizer state), a scheduler (its own state)."""
    return {
        "dataset": {"name": "digits", "val_fraction": 0.15},
        "model": {"arch": "mlp", "hidden": [32], "dropout": 0.2},
        "training": {
            "optimizer": "adam",
            "lr": 3e-3,
            "epochs": 4,
            "batch_size": 32,  # 1527 training samples → 48 steps per epoch, the last one short
            "scheduler": scheduler,
            "step_size": 1,
            "seed": 3,
            "log_every_steps": 10,
        },
    }


def weights(result_dir: str | None) -> dict[str, torch.Tensor]:
    return load_file(str(Path(result_dir or "") / "model.safetensors"))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.parametrize("scheduler", ["onecycle", "step"])  # stepped per step / per epoch
def test_stop_mid_epoch_then_resume_is_bitwise_identical(run_job: RunJob, scheduler: str) -> None:
    reference = run_job(spec(scheduler), job="reference")

    hooks = RecordingHooks(stop_at=(70, "preempted"))  # the 70th step boundary: epoch 2, step 21
    stopped = run_job(spec(scheduler), job="victim", hooks=hooks)
    assert stopped.status == "preempted"
    assert stopped.checkpoint is not None
    assert (stopped.checkpoint.epoch, stopped.checkpoint.step) == (1, 21)
    assert stopped.checkpoint.metric_value is None  # mid-epoch: no metrics, never "best"
    assert Path(stopped.checkpoint.path).name == "ckpt-e000001-s0000021"
    assert not (Path(stopped.checkpoint.path).parents[1] / "model").exists()

    resumed = run_job(spec(scheduler), job="victim")
    assert resumed.status == "succeeded"
    assert resumed.resumed_from is not None
    assert (resumed.resumed_from["epoch"], resumed.resumed_from["step"]) == (1, 21)
    assert same(weights(reference.model_dir), weights(resumed.model_dir))
    assert strip(resumed.history) == strip(reference.history)
    assert resumed.evaluation == reference.evaluation
    assert resumed.model_sha256 == reference.model_sha256


def test_cancel_in_the_first_epoch_then_preempt_then_finish(run_job: RunJob) -> None:
    """Two interruptions, the first before any epoch-end checkpoint exists."""
    s = spec("step")
    reference = run_job(s, job="reference")
    first = run_job(s, job="victim", hooks=RecordingHooks(stop_at=(5, "cancelled")))
    assert first.status == "cancelled" and first.checkpoint is not None
    assert (first.checkpoint.epoch, first.checkpoint.step) == (0, 4)
    second = run_job(s, job="victim", hooks=RecordingHooks(stop_at=(100, "preempted")))
    assert second.status == "preempted" and second.checkpoint is not None
    assert (second.checkpoint.epoch, second.checkpoint.step) == (2, 7)  # step 4 + 99 = 2·48 + 7
    done = run_job(s, job="victim")
    assert same(weights(reference.model_dir), weights(done.model_dir))
    assert strip(done.history) == strip(reference.history)


def test_lease_lost_raises_and_writes_nothing(run_job: RunJob, tmp_path: Path) -> None:
    """Another worker owns the job directory now: no checkpoint, no model."""
    with pytest.raises(Stopped) as info:
        run_job(spec("step"), job="lost", hooks=RecordingHooks(stop_at=(60, "lease_lost")))
    assert info.value.reason == "lease_lost" and info.value.checkpoint is None
    saved = sorted(p.name for p in (tmp_path / "lost" / "checkpoints").iterdir())
    assert saved == ["ckpt-e000001-s0000000"]  # only the epoch-end one before the stop
    assert not (tmp_path / "lost" / "model").exists()


def test_time_limit_checkpoints_then_resumes(run_job: RunJob) -> None:
    s = spec("step")
    reference = run_job(s, job="reference")
    with pytest.raises(TimeLimitExceeded) as info:
        run_job(s, job="slow", deadline=time.monotonic())  # already past: stops at the first step
    err = info.value.to_error_dict()
    assert err["type"] == "TimeLimitExceeded" and err["stage"] == "train"
    assert "max_minutes" in err["hint"]
    done = run_job(s, job="slow")
    assert done.resumed_from is not None and done.resumed_from["epoch"] == 0
    assert same(weights(reference.model_dir), weights(done.model_dir))


def test_a_finished_job_resumes_straight_to_register(run_job: RunJob) -> None:
    """A crash after the last checkpoint (in evaluate/register) re-runs only those stages."""
    s = spec("step")
    first = run_job(s, job="j")
    hooks = RecordingHooks()
    again = run_job(s, job="j", hooks=hooks)
    assert again.resumed_from is not None and again.resumed_from["epoch"] == 4
    assert hooks.epochs == [] and hooks.stop_checks == 0
    assert again.model_sha256 == first.model_sha256


def test_a_cancel_before_training_stops_between_stages(run_job: RunJob, tmp_path: Path) -> None:
    class CancelWhileLoading(RecordingHooks):
        def stage_finished(self, name: str, outputs: dict[str, Any]) -> None:
            super().stage_finished(name, outputs)
            self.stop_at, self.stopping = (0, "cancelled"), name == "collect"

    hooks = CancelWhileLoading()
    result = run_job(spec("step"), job="early", hooks=hooks)
    assert result.status == "cancelled" and result.checkpoint is None
    assert [n for kind, n, _ in hooks.stages if kind == "started"] == ["collect"]
    assert not (tmp_path / "early" / "checkpoints").exists()

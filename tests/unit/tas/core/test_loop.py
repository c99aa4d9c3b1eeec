"""The training loop's service concerns: non-finite loss, rows, progress, early stopping, clipping,
OOM, schedulers, validation metrics."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
import torch
from torch import nn

from tas.core.errors import NonFiniteLoss, OutOfMemory
from tas.core.loop import (
    EarlyStopping,
    LoopConfig,
    LoopState,
    TrainData,
    Trainer,
    best_row,
    epoch_order,
    evaluate,
)
from tests.helpers.pipeline import RecordingHooks, RunJob

CPU = torch.device("cpu")


def toy(n: int = 96, features: int = 4, classes: int = 3, seed: int = 0) -> TrainData:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, features, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    return TrainData(X, y.clamp_max(classes - 1), X[:32].clone(), y[:32].clamp_max(classes - 1))


def trainer(cfg: LoopConfig, hooks: Any = None, lr: float = 0.1, **kw: Any) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return Trainer(model, opt, nn.CrossEntropyLoss(), cfg, hooks, **kw)


def test_epoch_order_is_a_seeded_permutation() -> None:
    a = epoch_order(7, 3, 1000, CPU)
    assert torch.equal(a, epoch_order(7, 3, 1000, CPU))
    assert torch.equal(a.sort().values, torch.arange(1000))
    assert not torch.equal(a, epoch_order(7, 4, 1000, CPU))
    assert not torch.equal(a, epoch_order(8, 3, 1000, CPU))


def test_non_finite_loss_names_the_first_bad_step() -> None:
    """An inf in one sample: the error names the step whose batch holds it (1-based), found from
    the loss buffer at the next log interval, not by a per-step sync."""
    data = toy()
    bad = 50
    data.X[bad, 2] = float("inf")
    cfg = LoopConfig(epochs=3, batch_size=8, seed=1, log_every_steps=4)
    position = int((epoch_order(1, 0, 96, CPU) == bad).nonzero())
    with pytest.raises(NonFiniteLoss) as info:
        trainer(cfg).fit(data)
    err = info.value
    assert (err.epoch, err.step) == (1, position // 8 + 1)
    assert f"epoch 1 step {position // 8 + 1}" in err.message
    assert "training.lr" in (err.hint or "") and "training.grad_clip" in (err.hint or "")
    assert err.to_error_dict()["type"] == "NonFiniteLoss"


def test_divergence_through_the_pipeline_is_a_train_stage_error(run_job: RunJob) -> None:
    with pytest.raises(NonFiniteLoss) as info:
        run_job(
            {
                "dataset": {"name": "diabetes"},
                "model": {"arch": "mlp", "hidden": [64]},
                "training": {"optimizer": "sgd", "lr": 10.0, "epochs": 5, "log_every_steps": 2},
            }
        )
    err = info.value.to_error_dict()
    assert err["stage"] == "train" and err["type"] == "NonFiniteLoss"
    assert "epoch 1 step" in err["message"]


def test_step_rows_and_epoch_rows() -> None:
    hooks = RecordingHooks()
    cfg = LoopConfig(epochs=2, batch_size=8, log_every_steps=5)  # 12 steps per epoch
    state = trainer(cfg, hooks).fit(toy())
    assert [r["step"] for r in hooks.steps] == [5, 10, 15, 20]
    assert [r["epoch"] for r in hooks.steps] == [1, 1, 2, 2]
    assert all(set(r) == {"epoch", "step", "train_loss", "lr"} for r in hooks.steps)
    assert [r["epoch"] for r in hooks.epochs] == [1, 2]
    row = hooks.epochs[-1]
    assert set(row) == {
        "epoch",
        "train_loss",
        "val_loss",
        "val_accuracy",
        "lr",
        "epoch_seconds",
        "samples_per_second",
    }
    assert 0.0 <= row["val_accuracy"] <= 1.0 and row["samples_per_second"] > 0
    assert state.finished and state.stop_reason == "completed" and state.global_step == 24
    assert hooks.epochs == state.history


def test_train_loss_is_the_sample_weighted_mean_of_the_epoch() -> None:
    """With lr tiny the weights barely move: the epoch's train_loss ≈ the loss over all samples
    (the short last batch weighted by its size, not as a full batch)."""
    data = toy(n=100)
    t = trainer(LoopConfig(epochs=1, batch_size=32), lr=1e-12)
    with torch.no_grad():
        expected = float(nn.functional.cross_entropy(t.model(data.X), data.y))
    state = t.fit(data)
    assert state.history[0]["train_loss"] == pytest.approx(expected, rel=1e-5)


def test_progress_is_time_based() -> None:
    class Slow(RecordingHooks):
        def should_stop(self) -> str | None:
            time.sleep(0.01)
            return None

    hooks = Slow()
    cfg = LoopConfig(epochs=2, batch_size=4, progress_interval_s=0.05)  # 24 steps × ≥10 ms
    started = time.monotonic()
    trainer(cfg, hooks).fit(toy(n=48))
    elapsed = time.monotonic() - started
    calls = hooks.progress_calls
    assert 2 <= len(calls) <= elapsed / 0.05 + 2
    assert [c.fraction for c in calls] == sorted(c.fraction for c in calls)
    last = calls[-1]
    assert last.epochs == 2 and last.steps_per_epoch == 12 and last.samples_per_second > 0
    assert last.eta_seconds is not None and last.eta_seconds >= 0


def test_early_stopping_stops_and_checkpoints_the_end() -> None:
    saved: list[tuple[int, int, bool]] = []

    def on_checkpoint(s: LoopState, metrics: dict[str, float] | None) -> None:
        saved.append((s.epoch, s.step, s.finished))

    es = EarlyStopping("val_loss", "min", patience=2, min_delta=1e9)  # nothing counts as better
    cfg = LoopConfig(epochs=10, batch_size=16, early_stopping=es, checkpoint_every=5)
    state = trainer(cfg, on_checkpoint=on_checkpoint).fit(toy())
    assert len(state.history) == 3 and state.stop_reason == "early_stopped"
    assert (state.best_epoch, state.bad_epochs) == (1, 2)
    assert saved == [(3, 0, True)]  # not due by checkpoint_every, but the run ended


def test_grad_clip_bounds_the_update() -> None:
    def update_norm(clip: float | None) -> float:
        t = trainer(LoopConfig(epochs=1, batch_size=96, grad_clip=clip), lr=1.0)
        before = torch.cat([p.detach().flatten().clone() for p in t.model.parameters()])
        t.fit(toy())
        after = torch.cat([p.detach().flatten() for p in t.model.parameters()])
        return float((after - before).norm())

    assert update_norm(1e-3) == pytest.approx(1e-3, rel=1e-3)  # one step: lr · clipped norm
    assert update_norm(None) > 1e-2


def test_out_of_memory_names_the_batch_size() -> None:
    class Hungry(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    model = Hungry()
    t = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.CrossEntropyLoss(),
        LoopConfig(epochs=1, batch_size=32),
    )
    with pytest.raises(OutOfMemory) as info:
        t.fit(toy())
    assert "batch size 32" in info.value.message
    assert "training.batch_size (e.g. 16)" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("name", "interval", "calls"), [("step", "epoch", 3), ("onecycle", "step", 36)]
)
def test_scheduler_steps_per_its_interval(name: str, interval: str, calls: int) -> None:
    from types import SimpleNamespace

    from tas.core.optim import SCHEDULERS

    cfg = LoopConfig(epochs=3, batch_size=8, scheduler_interval=SCHEDULERS[name].interval)
    assert cfg.scheduler_interval == interval
    t = trainer(cfg)
    spec = SimpleNamespace(epochs=3, lr=0.1, step_size=1, gamma=0.5)
    t.scheduler = SCHEDULERS[name].build(t.optimizer, spec, 12)
    t.fit(toy())
    assert t.scheduler.last_epoch == calls


def test_evaluate_regression_and_binary_metrics() -> None:
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    X = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    y = torch.tensor([[1.0], [2.0], [5.0], [4.0]])  # one error of 2
    m = evaluate(model, X, y, nn.MSELoss(), "value", batch_size=3)
    assert m["loss"] == pytest.approx(1.0) and m["mae"] == pytest.approx(0.5)
    assert m["rmse"] == pytest.approx(1.0)
    assert m["r2"] == pytest.approx(1 - 4.0 / float(((y - y.mean()) ** 2).sum()))
    logits_model = nn.Linear(1, 1)
    with torch.no_grad():
        logits_model.weight.fill_(1.0)
        logits_model.bias.fill_(-2.5)  # positive (class 1) for x ≥ 3
    b = evaluate(
        logits_model,
        X,
        torch.tensor([[0.0], [0.0], [1.0], [0.0]]),
        nn.BCEWithLogitsLoss(),
        "binary",
        batch_size=2,
    )
    assert b["accuracy"] == pytest.approx(0.75) and math.isfinite(b["loss"])


def test_batchnorm_model_drops_a_lone_last_sample_instead_of_crashing() -> None:
    """97 samples at batch 8 leave one for the last batch: BatchNorm cannot train on a batch of
    one, so that sample sits the epoch out (a different one each epoch); a model without BatchNorm
    still trains on all 97."""
    data = toy(n=97)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hooks = RecordingHooks()
    cfg = LoopConfig(epochs=2, batch_size=8, seed=0)
    state = Trainer(model, opt, nn.CrossEntropyLoss(), cfg, hooks).fit(data)
    assert state.global_step == 2 * 12  # 96 samples: 12 full batches an epoch
    assert all(math.isfinite(r["train_loss"]) for r in hooks.epochs)
    plain = trainer(LoopConfig(epochs=1, batch_size=8, seed=0)).fit(data)
    assert plain.global_step == 13


def test_a_short_run_ends_with_a_measured_throughput() -> None:
    """A run shorter than the progress interval is reported once at its first step, before any
    step was timed (0 samples/s); the last report, at the end, carries the measured rate."""
    hooks = RecordingHooks()
    trainer(LoopConfig(epochs=2, batch_size=16, progress_interval_s=3600), hooks).fit(toy())
    first, last = hooks.progress_calls[0], hooks.progress_calls[-1]
    assert len(hooks.progress_calls) == 2 and first.samples_per_second == 0.0
    assert (last.fraction, last.epoch, last.step, last.eta_seconds) == (1.0, 2, 6, 0.0)
    assert last.samples_per_second > 0


def test_each_epoch_row_says_whether_it_is_the_best_so_far() -> None:
    """By the checkpoint's monitored metric: strictly better than every earlier epoch (the first
    of equals), the row `best_row` picks; the flag is an attribute, the row's keys stay."""
    hooks = RecordingHooks()
    cfg = LoopConfig(epochs=6, batch_size=8, monitor="val_accuracy", monitor_mode="max")
    state = trainer(cfg, hooks, lr=0.05).fit(toy())
    values = [r["val_accuracy"] for r in state.history]
    expected = [v > max(values[:i], default=-1.0) for i, v in enumerate(values)]
    assert [r.is_best for r in hooks.epochs] == expected
    assert [r for r in hooks.epochs if r.is_best][-1] == best_row(
        state.history, "val_accuracy", "max"
    )
    assert hooks.epochs == state.history and all("is_best" not in r for r in hooks.epochs)
    unmonitored = RecordingHooks()
    trainer(LoopConfig(epochs=2, batch_size=8), unmonitored).fit(toy())
    assert not any(r.is_best for r in unmonitored.epochs)

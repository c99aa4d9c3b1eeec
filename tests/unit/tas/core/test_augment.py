"""Batch augmentation: random crop with zero padding and horizontal flip, on whole batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from tas.core.augment import BatchAugment, build_augment, step_generator, step_seed
from tas.core.loop import LoopConfig, TrainData, Trainer
from tas.core.spec import AugmentSpec
from tests.helpers.pipeline import RecordingHooks, RunJob


def batch(n: int = 256, c: int = 3, h: int = 8, w: int = 8) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0)) + 5.0  # no zeros


def test_nothing_asked_is_no_augmentation() -> None:
    assert build_augment(None) is None
    assert build_augment(AugmentSpec()) is None
    assert build_augment(AugmentSpec(hflip=True)) == BatchAugment(0, True)
    assert build_augment(AugmentSpec(crop_padding=4)) == BatchAugment(4, False)


@pytest.mark.parametrize(("pad", "flip"), [(0, True), (2, False), (2, True), (4, True)])
def test_shape_dtype_and_device_are_kept(pad: int, flip: bool) -> None:
    x = batch(c=3, h=6, w=10)
    out = BatchAugment(pad, flip)(x, step_generator(0, 0, 0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.data_ptr() != x.data_ptr()  # a new tensor: the training data is never changed


def test_flip_really_flips_about_half() -> None:
    x = batch(n=1000)
    out = BatchAugment(0, True)(x, step_generator(1, 2, 3))
    same = (out == x).flatten(1).all(dim=1)
    flipped = (out == x.flip(3)).flatten(1).all(dim=1)
    assert bool((same ^ flipped).all())  # each sample is itself or its mirror image, not both
    assert 440 <= int(flipped.sum()) <= 560  # Binomial(1000, 1/2): ±3.8 σ


def _crop_offset(sample: torch.Tensor, original: torch.Tensor, pad: int) -> tuple[int, int, bool]:
    """Brute force: which (dy, dx, flipped) of the zero-padded original is this sample?"""
    padded = F.pad(original, (pad, pad, pad, pad))
    h, w = original.shape[-2:]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            if torch.equal(crop, sample):
                return dy, dx, False
            if torch.equal(crop.flip(2), sample):
                return dy, dx, True
    raise AssertionError("not a crop of the padded sample")


@pytest.mark.parametrize("flip", [False, True])
def test_crop_really_shifts_content(flip: bool) -> None:
    pad = 2
    x = batch(n=200, c=2, h=7, w=9)  # not square: rows and columns are not confused
    out = BatchAugment(pad, flip)(x, step_generator(0, 1, 0))
    found = [_crop_offset(out[i], x[i], pad) for i in range(x.shape[0])]
    offsets = {(dy, dx) for dy, dx, _ in found}
    assert len(offsets) == (2 * pad + 1) ** 2  # every offset in 200 draws (25 equally likely ones)
    centred = sum(1 for dy, dx, _ in found if (dy, dx) == (pad, pad))
    assert centred < 30  # mostly shifted: zeros come in at the borders
    assert bool((out == 0).any())
    flips = sum(f for _, _, f in found)
    assert (70 <= flips <= 130) if flip else flips == 0


def test_deterministic_per_seed_epoch_and_step() -> None:
    x = batch()
    aug = BatchAugment(3, True)
    a = aug(x, step_generator(7, 1, 5))
    assert torch.equal(a, aug(x, step_generator(7, 1, 5)))
    for other in [(8, 1, 5), (7, 2, 5), (7, 1, 6)]:
        assert not torch.equal(a, aug(x, step_generator(*other)))
    assert step_generator(7, 1, 5).initial_seed() == step_seed(7, 1, 5)


def test_the_loop_augments_training_batches_only_with_the_step_generator() -> None:
    """The hook sees every training batch once, with a generator seeded by (seed, epoch, step);
    validation never goes through it; the global RNG is not touched by it."""
    seen: list[tuple[int, int]] = []

    def spy(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        seen.append((xb.shape[0], g.initial_seed()))
        return xb

    X, y = batch(n=50, c=1, h=4, w=4), torch.randint(0, 3, (50,))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    cfg = LoopConfig(epochs=2, batch_size=16, seed=11)
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), cfg, augment=spy
    )
    trainer.fit(TrainData(X, y, X[:20], y[:20]))
    expected = [(bs, step_seed(11, e, s)) for e in range(2) for s, bs in enumerate([16, 16, 16, 2])]
    assert seen == expected


def digits_spec(augment: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "dataset": {"name": "digits", "val_fraction": 0.15, "augment": augment},
        "model": {"arch": "cnn", "channels": [8, 16], "dropout": 0.1},
        "training": {
            "optimizer": "adam",
            "lr": 3e-3,
            "epochs": 3,
            "batch_size": 64,  # 1,527 training samples: 24 steps per epoch
            "seed": 2,
            "scheduler": "onecycle",
            "log_every_steps": 10,
        },
    }


AUG = {"crop_padding": 1, "hflip": True}


def weights(result_dir: str | None) -> dict[str, torch.Tensor]:
    return load_file(str(Path(result_dir or "") / "model.safetensors"))


def test_resume_with_augmentation_is_bitwise_identical(run_job: RunJob) -> None:
    reference = run_job(digits_spec(AUG), job="reference")
    stopped = run_job(
        digits_spec(AUG), job="victim", hooks=RecordingHooks(stop_at=(35, "preempted"))
    )
    assert stopped.status == "preempted" and stopped.checkpoint is not None
    assert (stopped.checkpoint.epoch, stopped.checkpoint.step) == (1, 10)
    resumed = run_job(digits_spec(AUG), job="victim")
    assert resumed.resumed_from is not None
    a, b = weights(reference.model_dir), weights(resumed.model_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.evaluation == reference.evaluation

    plain = run_job(digits_spec(None), job="plain")  # and the augmentation really changed training
    c = weights(plain.model_dir)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_job_with_augmentation_trains_and_says_so(run_job: RunJob) -> None:
    """Random crops on 8×8 digits (flips would not suit digits: the resume test covers them)."""
    hooks = RecordingHooks()
    spec = digits_spec({"crop_padding": 1})
    spec["training"]["epochs"] = 8
    result = run_job(spec, hooks=hooks)
    assert result.status == "succeeded"
    assert hooks.outputs("train")["augment"] == {"crop_padding": 1, "hflip": False}
    assert result.final_metrics["val_accuracy"] >= 0.85  # 0.91 (0.96 without; 10 % by chance)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    none = RecordingHooks()
    run_job(digits_spec(None), job="none", hooks=none)
    assert none.outputs("train")["augment"] is None

"""Image augmentation on whole batches, on the training device: random crop with zero padding and
horizontal flip, in the spirit of KellerJordan's airbench: every sample's crop offset and flip bit are
drawn at once, and one `gather` over the flattened pixels cuts every (mirrored) crop, with the pixels
that fall in the padding zero-filled by a mask — the same result as zero-padding the batch and
slicing, without materialising the padded copy. Never a per-sample Python loop.

Randomness comes only from the `torch.Generator` the loop hands in, seeded by (run seed, epoch,
step) (`step_generator`): the draws of a step do not depend on what ran before it, so a run resumed
mid-epoch augments its remaining batches exactly as an uninterrupted run does, and augmentation does
not consume the global RNG (dropout's stream is unchanged by turning it on). The draws are made on the
CPU and moved to the batch's device, so a CPU and a GPU run see the same crops and flips.

Applied to training batches only, after normalisation: the zero padding is then the training mean."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from tas.core.spec import AugmentSpec


def step_seed(seed: int, epoch: int, step: int) -> int:
    """A well-mixed 63-bit seed for (run seed, epoch, step in the epoch)."""
    ss = np.random.SeedSequence([seed % (1 << 63), epoch, step, 0xA06])  # 0xA06: "aug", a salt
    return int(ss.generate_state(1, dtype=np.uint64)[0]) >> 1


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """The CPU generator a training step's augmentation draws from."""
    return torch.Generator().manual_seed(step_seed(seed, epoch, step))


@dataclass(frozen=True)
class BatchAugment:
    """x (B, C, H, W) → augmented x of the same shape, dtype and device (a new tensor)."""

    crop_padding: int = 0
    hflip: bool = False

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.hflip

    def describe(self) -> dict[str, Any]:
        return {"crop_padding": self.crop_padding, "hflip": self.hflip}

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"augmentation needs (B, C, H, W) batches, got {tuple(x.shape)}")
        b, c, h, w = x.shape
        p = self.crop_padding
        # The draws, in a fixed order: a crop offset in [-p, p] per sample and axis, a flip bit.
        shift = torch.randint(-p, p + 1, (2, b), generator=g) if p > 0 else None
        flip = torch.rand(b, generator=g) < 0.5 if self.hflip else None
        if shift is None and flip is None:
            return x.clone()
        dev = x.device
        # Where each output pixel reads from in its own (unpadded) sample: (B, H) rows, (B, W) cols.
        rows = torch.arange(h, device=dev).expand(b, h)
        cols = torch.arange(w, device=dev).expand(b, w)
        if flip is not None:  # a flipped sample reads its columns right to left
            cols = torch.where(flip.to(dev, non_blocking=True)[:, None], cols.flip(1), cols)
        if shift is not None:
            dy, dx = shift.to(dev, non_blocking=True)
            rows, cols = rows + dy[:, None], cols + dx[:, None]
        # One gather over the flattened pixels (the same source pixel for every channel) ...
        idx = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]
        out = x.flatten(2).gather(2, idx.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)
        if shift is not None:  # ... and zeros where the crop reaches into the padding
            inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
            out.masked_fill_(~inside[:, None], 0)
        return out


def build_augment(spec: AugmentSpec | None) -> BatchAugment | None:
    """The batch augmentation a job's `dataset.augment` asks for; None when it asks for nothing."""
    if spec is None:
        return None
    aug = BatchAugment(crop_padding=spec.crop_padding, hflip=spec.hflip)
    return aug if aug.active else None

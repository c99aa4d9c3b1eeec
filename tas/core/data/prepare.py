"""Preprocess: split by index, then fit the standardisation on the training split only.

Everything is a whole-tensor op (a seeded permutation, a stable sort, masks): no per-sample Python, so
preparing 60,000 images costs a few tensor passes. The split depends only on (data, split_seed, the
fractions, stratify), so a resumed job re-derives exactly the split it trained on.

The splits keep the data's compact form (uint8 images stay uint8) and are not normalised here: the
`InputTransform` decodes and normalises each batch on the training device, where it is needed, so
host memory, the preprocessing cache and the device hold a quarter of float32's bytes for images,
and a dataset larger than memory can be streamed batch by batch from a memory map. Normalising a
batch is the same element-wise arithmetic as normalising the whole tensor was, so the numbers the
model sees are unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from tas.core.data.dataset import PIXELS, Arrays, DatasetInfo, Loaded, as_float
from tas.core.data.pages import page_out
from tas.core.data.scratch import ScratchArray
from tas.core.errors import DataError

#: A standard deviation below this is treated as a constant feature: divide by 1, not by ~0.
STD_FLOOR = 1e-6
#: Whole-dataset passes (statistics of uint8 pixels, the finite check) read this many bytes of
#: samples at a time: their temporaries stay small whatever the dataset's size (a memory map's
#: pages are read in turn, never all at once).
CHUNK_BYTES = 64 << 20


def _row_chunks(X: torch.Tensor, itemsize: int | None = None) -> range:
    """Start rows of chunks of about `CHUNK_BYTES` (`itemsize`: bytes per element of the chunk's
    temporaries, default X's own)."""
    per_row = max(1, X[0].numel() * (itemsize or X.element_size())) if X.shape[0] else 1
    return range(0, int(X.shape[0]), max(1, CHUNK_BYTES // per_row))


def _pixel_std_mean(
    X: torch.Tensor, kind: Literal["per_channel", "per_feature"]
) -> tuple[torch.Tensor, torch.Tensor]:
    """std and mean of uint8 pixels read as value / 255, per channel or per element, exactly (in
    float64) from a 256-bin histogram per group, counted in chunks: one pass over the bytes, never
    a float copy of the dataset. The values are `as_float`'s, so the statistics are those of the
    float32 images to float precision."""
    sample = tuple(X.shape[1:])
    if kind == "per_channel":
        groups = sample[0]
        group_of = torch.arange(groups).view(-1, 1, 1).expand(sample)
    else:
        groups = max(1, X[0].numel()) if X.shape[0] else 1
        group_of = torch.arange(groups).view(sample)
    slot = (group_of * 256).reshape(1, -1)
    counts = torch.zeros(groups * 256, dtype=torch.int64)
    step = _row_chunks(X, 8).step
    for start in range(0, int(X.shape[0]), step):
        chunk = X[start : start + step].reshape(-1, slot.shape[1]).to(torch.int64)
        counts += torch.bincount((chunk + slot).reshape(-1), minlength=groups * 256)
    counts = counts.view(groups, 256).to(torch.float64)
    values = torch.arange(256, dtype=torch.float32).div_(255.0).to(torch.float64)
    n = counts.sum(1).clamp_min(1.0)
    mean = (counts * values).sum(1) / n
    var = (counts * (values - mean[:, None]) ** 2).sum(1) / n
    shape = (groups, 1, 1) if kind == "per_channel" else sample
    return var.sqrt().view(shape), mean.view(shape)


@dataclass
class Normalizer:
    """x → (x - mean) / std, with mean/std shaped to broadcast over one sample.

    "per_channel" (images, C×H×W): one mean/std per channel, shape (C, 1, 1).
    "per_feature" (anything else): one per input element, shape = the sample shape."""

    mean: torch.Tensor
    std: torch.Tensor
    kind: Literal["per_channel", "per_feature"]

    @classmethod
    def fit(cls, X: torch.Tensor, kind: Literal["per_channel", "per_feature"]) -> Normalizer:
        if kind == "per_channel" and X.dim() != 4:
            raise ValueError(
                f"per_channel normalisation needs (N, C, H, W) data, got {tuple(X.shape)}"
            )
        if X.dtype == PIXELS:
            std, mean = _pixel_std_mean(X, kind)
        elif kind == "per_channel":
            std, mean = torch.std_mean(X, dim=(0, 2, 3), correction=0, keepdim=True)
            mean, std = mean[0], std[0]
        else:
            std, mean = torch.std_mean(X, dim=0, correction=0)
        std = torch.where(std < STD_FLOOR, torch.ones_like(std), std)
        return cls(mean.to(torch.float32).contiguous(), std.to(torch.float32).contiguous(), kind)

    @classmethod
    def given(cls, mean: list[float], std: list[float]) -> Normalizer:
        """Per-channel statistics fixed in advance (ImageNet's for torchvision's weights)."""
        shape = (len(mean), 1, 1)
        return cls(
            torch.tensor(mean, dtype=torch.float32).reshape(shape),
            torch.tensor(std, dtype=torch.float32).reshape(shape),
            "per_channel",
        )

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        """A new normalised tensor (the input is left alone)."""
        mean, std = self.mean.to(X.device), self.std.to(X.device)
        return (X - mean) / std

    def to(self, device: torch.device | str) -> Normalizer:
        """The same statistics on `device` (moved once, not at every batch)."""
        return Normalizer(self.mean.to(device), self.std.to(device), self.kind)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "shape": list(self.mean.shape),
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        shape = tuple(int(s) for s in d["shape"])
        mean = torch.tensor(d["mean"], dtype=torch.float32).reshape(shape)
        std = torch.tensor(d["std"], dtype=torch.float32).reshape(shape)
        return cls(mean, std, d["kind"])


@dataclass(frozen=True)
class InputTransform:
    """A batch of compact inputs, already on the training device → the model's inputs: uint8
    pixels decoded to float32 (`as_float`), then normalised. Per batch, so that only a batch is
    ever float32; the arithmetic is element-wise, so a batch gets exactly the numbers the whole
    normalised tensor had."""

    normalizer: Normalizer | None = None

    def to(self, device: torch.device | str) -> InputTransform:
        """With the statistics moved to `device` once."""
        return InputTransform(self.normalizer.to(device) if self.normalizer else None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = as_float(x)
        return self.normalizer(x) if self.normalizer is not None else x


@dataclass
class TargetScaler:
    """Regression targets y → (y - mean) / std, one mean/std per target column, fitted on the
    training split. The loss then sees targets of unit scale whatever their units: with raw targets
    in the hundreds a freshly initialised network's outputs (near 0) are hundreds off, the first
    steps are spent learning the offset, and Adam's early stopping sets in long before the shape
    of the function is learnt. Outputs go back to the data's units with `inverse`."""

    mean: torch.Tensor  # (d,)
    std: torch.Tensor  # (d,)

    @classmethod
    def fit(cls, y: torch.Tensor) -> TargetScaler:
        y2 = y.to(torch.float64).reshape(y.shape[0], -1)
        std, mean = torch.std_mean(y2, dim=0, correction=0)
        std = torch.where(std < STD_FLOOR, torch.ones_like(std), std)
        return cls(mean.to(torch.float32), std.to(torch.float32))

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """Scaled targets (N, d), a new tensor."""
        y2 = y.to(torch.float32).reshape(y.shape[0], -1)
        return (y2 - self.mean.to(y2.device)) / self.std.to(y2.device)

    def inverse(self, out: torch.Tensor) -> torch.Tensor:
        """Scaled values (N, d) → the data's units."""
        return out * self.std.to(out.device) + self.mean.to(out.device)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "standard",
            "formula": "value = output * std + mean (per target column)",
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TargetScaler:
        if d.get("kind") != "standard":
            raise ValueError(f"unknown target scaling {d.get('kind')!r}")
        mean = torch.tensor(d["mean"], dtype=torch.float32).reshape(-1)
        std = torch.tensor(d["std"], dtype=torch.float32).reshape(-1)
        return cls(mean, std)


@dataclass
class SplitIndices:
    train: torch.Tensor
    val: torch.Tensor | None
    test: torch.Tensor | None
    stratified: bool


def _count(n: int, fraction: float) -> int:
    """round(n * fraction), but a positive fraction of at least two samples gets at least one."""
    k = round(n * fraction)
    return max(k, 1) if fraction > 0 and n >= 2 else k


def can_stratify(y: torch.Tensor) -> bool:
    """Class labels (1-D integers) where every present class has at least two samples."""
    if y.dim() != 1 or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        return False
    if y.numel() == 0 or int(y.min()) < 0:
        return False
    counts = torch.bincount(y.long())
    return bool((counts[counts > 0] >= 2).all())


def split_indices(
    y: torch.Tensor,
    val_fraction: float,
    test_fraction: float = 0.0,
    seed: int = 42,
    stratify: bool = True,
) -> SplitIndices:
    """Seeded train/val/test indices (each sorted). Stratified: each class is split in the same
    proportions, by ranking a random order within each class; otherwise one random order."""
    n = int(y.shape[0])
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    stratified = stratify and (val_fraction > 0 or test_fraction > 0) and can_stratify(y)
    if stratified:
        labels = y.long()[perm]
        order = torch.sort(labels, stable=True).indices  # grouped by class, random within a class
        idx, lab = perm[order], labels[order]
        counts = torch.bincount(lab)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(n) - starts[lab]
        n_test = torch.round(counts.double() * test_fraction).long()
        n_val = torch.round(counts.double() * val_fraction).long()
        n_val = torch.minimum(
            n_val, (counts - 1 - n_test).clamp_min(0)
        )  # a class keeps a train sample
        lo, hi = n_test[lab], (n_test + n_val)[lab]
        if (test_fraction > 0 and int(n_test.sum()) == 0) or (
            val_fraction > 0 and int(n_val.sum()) == 0
        ):
            return split_indices(y, val_fraction, test_fraction, seed, stratify=False)
    else:
        idx, rank = perm, torch.arange(n)
        t = _count(n, test_fraction)
        v = min(_count(n - t, val_fraction), max(0, n - t - 1))
        lo, hi = torch.full((n,), t), torch.full((n,), t + v)
    is_test, is_val = rank < lo, (rank >= lo) & (rank < hi)
    train = idx[~(is_test | is_val)].sort().values
    val = idx[is_val].sort().values if val_fraction > 0 else None
    test = idx[is_test].sort().values if test_fraction > 0 else None
    if train.numel() == 0:
        raise DataError(f"the training split is empty ({n} samples); lower dataset.val_fraction")
    return SplitIndices(train, val, test, stratified)


#: A split whose inputs take more than this is gathered into a memory-mapped scratch file, a chunk
#: at a time, instead of into memory: its pages are then the kernel's to write back and drop, so a
#: dataset larger than memory (an upload decoded into its own scratch file) can be split at all.
SCRATCH_SPLIT_BYTES = 256 << 20


def _take(a: Arrays, idx: torch.Tensor, scratch_dir: Path | None) -> Arrays:
    """The rows `idx` of a split (a copy: the caller's arrays are left alone); large inputs go
    to a scratch file beside the preprocessing cache (`scratch_dir`; else the system's temp)."""
    X, y = a.X, a.y.index_select(0, idx)
    row_bytes = X[0].numel() * X.element_size() if X.shape[0] else 0
    if idx.numel() * row_bytes <= SCRATCH_SPLIT_BYTES:
        return Arrays(X.index_select(0, idx), y)
    near = scratch_dir / "split" if scratch_dir is not None else None
    with ScratchArray(tuple(X.shape[1:]), X.numpy().dtype, near=near) as scratch:
        step = _row_chunks(X).step
        for start in range(0, int(idx.numel()), step):
            scratch.append(X.index_select(0, idx[start : start + step]).numpy())
        return Arrays(torch.from_numpy(scratch.array()), y)


@dataclass
class Prepared:
    """The splits in their compact form (not normalised) and the normaliser fitted on the training
    split: `inputs` gives the transform that turns a batch of them into the model's inputs."""

    train: Arrays
    val: Arrays | None
    test: Arrays | None
    normalizer: Normalizer | None
    stratified: bool
    #: "official" (the source's test split), "held_out" (dataset.test_fraction) or None.
    test_source: str | None
    #: Each split's samples' positions in the source before splitting (int64, in the split's
    #: order): rows of the source's training data, and for an official test split its own rows.
    indices: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def inputs(self) -> InputTransform:
        """Compact batch → the model's inputs (decoded and normalised)."""
        return InputTransform(self.normalizer)

    def outputs(self) -> dict[str, Any]:
        """The preprocess stage's JSON-able record."""
        return {
            "train_samples": len(self.train),
            "val_samples": len(self.val) if self.val is not None else 0,
            "test_samples": len(self.test) if self.test is not None else 0,
            "test_source": self.test_source,
            "stratified": self.stratified,
            "normalization": self.normalizer.to_dict() if self.normalizer else None,
        }


def _all_finite(X: torch.Tensor) -> bool:
    """No NaN or infinity, checked a chunk at a time (integers, pixels among them, always are)."""
    if not X.is_floating_point():
        return True
    step = _row_chunks(X).step
    return all(bool(torch.isfinite(X[i : i + step]).all()) for i in range(0, int(X.shape[0]), step))


def check_arrays(a: Arrays, info: DatasetInfo, what: str) -> None:
    """Shapes, dtypes and finite values, checked once before training (not per batch)."""
    if tuple(a.X.shape[1:]) != tuple(info.input_shape):
        raise DataError(
            f"{what}: samples have shape {list(a.X.shape[1:])}, dataset {info.name!r}"
            f" declares {list(info.input_shape)}"
        )
    if a.X.shape[0] != a.y.shape[0]:
        raise DataError(f"{what}: {a.X.shape[0]} inputs but {a.y.shape[0]} targets")
    if not _all_finite(a.X):
        raise DataError(
            f"{what}: the inputs contain NaN or infinite values",
            hint="clean the data before uploading it",
        )
    if info.task == "classification":
        if a.y.dim() != 1 or a.y.is_floating_point():
            raise DataError(
                f"{what}: class labels must be integers of shape (N,), got {a.y.dtype}"
                f" {list(a.y.shape)}"
            )
        if a.y.numel() and (int(a.y.min()) < 0 or int(a.y.max()) >= (info.num_classes or 0)):
            raise DataError(f"{what}: labels must lie in 0..{(info.num_classes or 0) - 1}")
    elif not bool(torch.isfinite(a.y).all()):
        raise DataError(f"{what}: the targets contain NaN or infinite values")


def prepare(
    loaded: Loaded,
    info: DatasetInfo,
    val_fraction: float,
    test_fraction: float = 0.0,
    split_seed: int = 42,
    stratify: bool = True,
    normalize: bool | None = None,
    norm_stats: dict[str, list[float]] | None = None,
    scratch_dir: Path | None = None,
) -> Prepared:
    """Split (test held out only when the source has no official test split), then fit the
    normaliser on the training split; the splits stay compact and unnormalised (`Prepared.inputs`
    does both per batch). `norm_stats`: per-channel mean/std to use for images instead of fitted
    ones (a pretrained model's own). `scratch_dir`: where a split too large for memory is written
    (an existing folder on a local disk)."""
    data = loaded.train
    check_arrays(data, info, "training data")
    if loaded.test is not None:
        check_arrays(loaded.test, info, "test data")
    held_out = test_fraction if loaded.test is None else 0.0
    idx = split_indices(data.y, val_fraction, held_out, split_seed, stratify)
    train = _take(data, idx.train, scratch_dir)
    indices = {"train": idx.train}
    val = _take(data, idx.val, scratch_dir) if idx.val is not None and idx.val.numel() else None
    if val is not None and idx.val is not None:
        indices["val"] = idx.val
    if loaded.test is not None:
        test: Arrays | None = loaded.test
        source: str | None = "official"
        indices["test"] = torch.arange(len(loaded.test))
    elif idx.test is not None and idx.test.numel():
        test, source = _take(data, idx.test, scratch_dir), "held_out"
        indices["test"] = idx.test
    else:
        test, source = None, None
    if data.X.numel() * data.X.element_size() > SCRATCH_SPLIT_BYTES:
        # The splits are copies: the source's pages, all read by the split, would otherwise stay
        # in the resident set beside the split's while the fit and the cache store read those,
        # twice the dataset (a no-op unless the source is a memory-mapped file).
        page_out(data.X)
    use_norm = info.default_normalize if normalize is None else normalize
    normalizer = None
    if use_norm:
        kind: Literal["per_channel", "per_feature"] = (
            "per_channel" if info.kind == "image" and train.X.dim() == 4 else "per_feature"
        )
        if norm_stats is not None and kind == "per_channel":
            normalizer = Normalizer.given(norm_stats["mean"], norm_stats["std"])
        else:
            normalizer = Normalizer.fit(train.X, kind)
    indices = {k: v.to(torch.int64) for k, v in indices.items()}
    return Prepared(train, val, test, normalizer, idx.stratified, source, indices)

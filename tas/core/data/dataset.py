"""What a dataset is to the core: its schema (`DatasetInfo`, known without reading the data), its
tensors (`Arrays`, `Loaded`) and how a loader is called (`LoadContext`, `DatasetSource`).

These types sit below every producer of datasets (the built-in loaders in `tas.core.data.builtin`,
the upload readers in `tas.core.data.formats`) and every consumer (the registry, preparation, the
cache, the pipeline), so that none of them has to import another to share them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

Task = Literal["classification", "regression"]
Kind = Literal["tabular", "image"]


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's schema: enough to validate a spec and size a model before any data is read."""

    name: str
    task: Task
    input_shape: tuple[int, ...]
    num_classes: int | None = None
    class_names: list[str] | None = None
    target_dim: int = 1
    #: "image" for C×H×W samples, "tabular" for feature vectors.
    kind: Kind = "tabular"
    default_normalize: bool = True
    #: Whether the source has an official test split (else evaluate uses a held-out fraction).
    has_test_split: bool = False
    samples: int | None = None
    #: Tabular sets: the name of each input column, in order (what `/predict` rows are keyed by).
    feature_names: list[str] | None = None
    #: Built-in classification sets: samples per class, in class order (of the training split for
    #: those with an official test split), written out so that listing them loads no data.
    class_counts: list[int] | None = None


#: The one compact input type besides float32: 8-bit images, each byte a pixel value in 0..255.
PIXELS = torch.uint8


@dataclass
class Arrays:
    """A whole dataset as two tensors: X (N, *input_shape) in its compact form, float32 features or
    uint8 pixels (images, read as value / 255 by `as_float`); y int64 (N,) or float32 (N, d).

    Images stay uint8 until a batch reaches the training device: a quarter of float32's bytes in
    memory, in the preprocessing cache and on the device, and the same numbers once decoded."""

    X: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.X.shape[0])


def as_float(x: torch.Tensor) -> torch.Tensor:
    """X as float32: uint8 pixels → value / 255 in [0, 1] (a new tensor), by the very operations
    the loaders used when they stored images as float32 (a copy into float32, then an in-place
    division by 255), so a decoded batch matches the old whole-tensor decode to the bit; float32
    is returned as it is, other dtypes converted."""
    if x.dtype == PIXELS:
        return x.to(torch.float32).div_(255.0)
    return x if x.dtype == torch.float32 else x.to(torch.float32)


@dataclass
class LoadContext:
    datasets_dir: Path
    allow_download: bool = False


@dataclass
class Loaded:
    train: Arrays
    test: Arrays | None = None
    notes: dict[str, object] = field(default_factory=dict)


class DatasetUnavailable(RuntimeError):
    """The files are missing and downloading is off: the message says where to put which files."""


#: A loader: whole tensors from where `LoadContext` says the files are.
Loader = Callable[[LoadContext], Loaded]


@dataclass(frozen=True)
class DatasetSource:
    info: DatasetInfo
    load: Loader

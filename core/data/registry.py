"""Dataset registry: what each built-in dataset is (known without loading it) and how to load it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's schema: enough to validate a spec and size a model before any data is read."""

    name: str
    task: Literal["classification", "regression"]
    input_shape: tuple[int, ...]
    num_classes: int | None = None
    class_names: list[str] | None = None
    target_dim: int = 1
    #: "image" for C×H×W samples, "tabular" for feature vectors.
    kind: Literal["tabular", "image"] = "tabular"
    default_normalize: bool = True
    #: Whether the source has an official test split (else evaluate uses a held-out fraction).
    has_test_split: bool = False
    samples: int | None = None


@dataclass
class Arrays:
    """A whole dataset as two tensors: X float32 (N, *input_shape); y int64 (N,) or float32 (N, d)."""

    X: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.X.shape[0])


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


@dataclass(frozen=True)
class DatasetSource:
    info: DatasetInfo
    load: Callable[[LoadContext], Loaded]


def _lazy(name: str) -> Callable[[LoadContext], Loaded]:
    """Loaders import sklearn/torchvision only when a job actually uses that dataset."""

    def load(ctx: LoadContext) -> Loaded:
        from core.data import builtin

        fn: Callable[[LoadContext], Loaded] = getattr(builtin, f"load_{name}")
        return fn(ctx)

    return load


_DIGITS = [str(i) for i in range(10)]
_FASHION = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

_INFOS = [
    DatasetInfo("digits", "classification", (1, 8, 8), 10, _DIGITS, kind="image", samples=1797),
    DatasetInfo(
        "iris", "classification", (4,), 3, ["setosa", "versicolor", "virginica"], samples=150
    ),
    DatasetInfo("wine", "classification", (13,), 3, ["class_0", "class_1", "class_2"], samples=178),
    DatasetInfo("breast_cancer", "classification", (30,), 2, ["malignant", "benign"], samples=569),
    DatasetInfo("diabetes", "regression", (10,), samples=442),
    DatasetInfo(
        "xor", "classification", (2,), 2, ["0", "1"], default_normalize=False, samples=2500
    ),
    DatasetInfo("linear", "regression", (3,), default_normalize=False, samples=5),
    DatasetInfo(
        "mnist",
        "classification",
        (1, 28, 28),
        10,
        _DIGITS,
        kind="image",
        has_test_split=True,
        samples=60000,
    ),
    DatasetInfo(
        "fashion_mnist",
        "classification",
        (1, 28, 28),
        10,
        _FASHION,
        kind="image",
        has_test_split=True,
        samples=60000,
    ),
    DatasetInfo(
        "cifar10",
        "classification",
        (3, 32, 32),
        10,
        _CIFAR,
        kind="image",
        has_test_split=True,
        samples=50000,
    ),
]

BUILTIN_DATASETS: dict[str, DatasetSource] = {
    i.name: DatasetSource(i, _lazy(i.name)) for i in _INFOS
}

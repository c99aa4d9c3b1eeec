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
    #: Tabular sets: the name of each input column, in order (what `/predict` rows are keyed by).
    feature_names: list[str] | None = None


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
        from tas.core.data import builtin

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
#: scikit-learn's `feature_names` of its bundled tabular sets, written out so that listing the
#: built-ins never imports scikit-learn (a test checks them against scikit-learn's own).
_IRIS_FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
_WINE_FEATURES = [
    "alcohol",
    "malic_acid",
    "ash",
    "alcalinity_of_ash",
    "magnesium",
    "total_phenols",
    "flavanoids",
    "nonflavanoid_phenols",
    "proanthocyanins",
    "color_intensity",
    "hue",
    "od280/od315_of_diluted_wines",
    "proline",
]
_CELL = [
    "radius",
    "texture",
    "perimeter",
    "area",
    "smoothness",
    "compactness",
    "concavity",
    "concave points",
    "symmetry",
    "fractal dimension",
]
_BREAST_CANCER_FEATURES = (
    [f"mean {c}" for c in _CELL] + [f"{c} error" for c in _CELL] + [f"worst {c}" for c in _CELL]
)
_DIABETES_FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
_CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

_INFOS = [
    DatasetInfo("digits", "classification", (1, 8, 8), 10, _DIGITS, kind="image", samples=1797),
    DatasetInfo(
        "iris",
        "classification",
        (4,),
        3,
        ["setosa", "versicolor", "virginica"],
        samples=150,
        feature_names=_IRIS_FEATURES,
    ),
    DatasetInfo(
        "wine",
        "classification",
        (13,),
        3,
        ["class_0", "class_1", "class_2"],
        samples=178,
        feature_names=_WINE_FEATURES,
    ),
    DatasetInfo(
        "breast_cancer",
        "classification",
        (30,),
        2,
        ["malignant", "benign"],
        samples=569,
        feature_names=_BREAST_CANCER_FEATURES,
    ),
    DatasetInfo("diabetes", "regression", (10,), samples=442, feature_names=_DIABETES_FEATURES),
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

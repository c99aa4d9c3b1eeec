"""Dataset registry: what each built-in dataset is (known without loading it) and how to load it.

One entry per dataset: its `DatasetInfo` beside its loader from `tas.core.data.builtin`. The loaders
import scikit-learn and torchvision inside their bodies, so listing the built-ins (what the API does
to check a spec) imports neither."""

from __future__ import annotations

from tas.core.data import builtin
from tas.core.data.dataset import DatasetInfo, DatasetSource

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

#: One entry per built-in: what it is, and the function that loads it.
_SOURCES = [
    DatasetSource(
        DatasetInfo(
            "digits",
            "classification",
            (1, 8, 8),
            10,
            _DIGITS,
            kind="image",
            samples=1797,
            class_counts=[178, 182, 177, 183, 181, 182, 181, 179, 174, 180],
        ),
        builtin.load_digits,
    ),
    DatasetSource(
        DatasetInfo(
            "iris",
            "classification",
            (4,),
            3,
            ["setosa", "versicolor", "virginica"],
            samples=150,
            feature_names=_IRIS_FEATURES,
            class_counts=[50, 50, 50],
        ),
        builtin.load_iris,
    ),
    DatasetSource(
        DatasetInfo(
            "wine",
            "classification",
            (13,),
            3,
            ["class_0", "class_1", "class_2"],
            samples=178,
            feature_names=_WINE_FEATURES,
            class_counts=[59, 71, 48],
        ),
        builtin.load_wine,
    ),
    DatasetSource(
        DatasetInfo(
            "breast_cancer",
            "classification",
            (30,),
            2,
            ["malignant", "benign"],
            samples=569,
            feature_names=_BREAST_CANCER_FEATURES,
            class_counts=[212, 357],
        ),
        builtin.load_breast_cancer,
    ),
    DatasetSource(
        DatasetInfo("diabetes", "regression", (10,), samples=442, feature_names=_DIABETES_FEATURES),
        builtin.load_diabetes,
    ),
    DatasetSource(
        DatasetInfo(
            "xor",
            "classification",
            (2,),
            2,
            ["0", "1"],
            default_normalize=False,
            samples=2500,
            class_counts=[1296, 1204],
        ),
        builtin.load_xor,
    ),
    DatasetSource(
        DatasetInfo("linear", "regression", (3,), default_normalize=False, samples=5),
        builtin.load_linear,
    ),
    DatasetSource(
        DatasetInfo(
            "mnist",
            "classification",
            (1, 28, 28),
            10,
            _DIGITS,
            kind="image",
            has_test_split=True,
            samples=60000,
            # MNIST's published training-set counts per digit.
            class_counts=[5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        ),
        builtin.load_mnist,
    ),
    DatasetSource(
        DatasetInfo(
            "fashion_mnist",
            "classification",
            (1, 28, 28),
            10,
            _FASHION,
            kind="image",
            has_test_split=True,
            samples=60000,
            class_counts=[6000] * 10,
        ),
        builtin.load_fashion_mnist,
    ),
    DatasetSource(
        DatasetInfo(
            "cifar10",
            "classification",
            (3, 32, 32),
            10,
            _CIFAR,
            kind="image",
            has_test_split=True,
            samples=50000,
            class_counts=[5000] * 10,
        ),
        builtin.load_cifar10,
    ),
]

BUILTIN_DATASETS: dict[str, DatasetSource] = {s.info.name: s for s in _SOURCES}

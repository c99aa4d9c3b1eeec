"""Built-in datasets: shapes and dtypes, and torchvision's real loaders over files in its layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tas.core.data import builtin
from tas.core.data.dataset import DatasetUnavailable, LoadContext, as_float
from tas.core.data.registry import BUILTIN_DATASETS
from tests.helpers.datasets import write_mnist
from tests.helpers.pipeline import RunJob

MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_mnist_like_through_torchvision(tmp_path: Path, name: str, folder: str) -> None:
    arrays = write_mnist(tmp_path, folder, n_train=40, n_test=12)
    loaded = BUILTIN_DATASETS[name].load(LoadContext(tmp_path, allow_download=False))
    assert loaded.test is not None
    # compact: the file's bytes as uint8, read as value / 255 (float32) per batch
    assert loaded.train.X.shape == (40, 1, 28, 28) and loaded.train.X.dtype == torch.uint8
    assert loaded.test.X.shape == (12, 1, 28, 28) and loaded.test.X.dtype == torch.uint8
    raw = torch.from_numpy(arrays["train-images-idx3-ubyte"])
    assert torch.equal(loaded.train.X[:, 0], raw)
    X = as_float(loaded.train.X)
    assert X.dtype == torch.float32
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.float32) / 255.0)
    assert torch.allclose(X[:, 0], expected)
    assert loaded.train.y.dtype == torch.int64
    assert loaded.train.y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert loaded.test.y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert float(X.min()) >= 0.0 and float(X.max()) <= 1.0


def test_gzipped_mnist_files_are_unpacked(tmp_path: Path) -> None:
    write_mnist(tmp_path, "MNIST", n_train=10, n_test=5, gz=True)
    loaded = builtin.load_mnist(LoadContext(tmp_path))
    assert len(loaded.train) == 10 and loaded.test is not None and len(loaded.test) == 5


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_missing_mnist_offline_names_directory_and_files(
    tmp_path: Path, name: str, folder: str
) -> None:
    (tmp_path / folder / "raw").mkdir(parents=True)
    (tmp_path / folder / "raw" / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(DatasetUnavailable) as info:
        BUILTIN_DATASETS[name].load(LoadContext(tmp_path, allow_download=False))
    msg = str(info.value)
    assert str(tmp_path / folder / "raw") in msg
    for f in MNIST_FILES:
        assert f in msg
    assert "missing: train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte" in msg
    assert "TAS_ALLOW_DOWNLOAD" in msg


def test_failed_download_is_dataset_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets as tvd

    def no_network(self: object) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: network unreachable")

    monkeypatch.setattr(tvd.MNIST, "download", no_network)
    with pytest.raises(DatasetUnavailable, match="network unreachable") as info:
        builtin.load_mnist(LoadContext(tmp_path, allow_download=True))
    assert str(tmp_path / "MNIST" / "raw") in str(info.value)


def test_cifar10_missing_or_unofficial_files(tmp_path: Path) -> None:
    """torchvision checks each CIFAR-10 pickle against the official md5 before unpickling it, so a
    test cannot fabricate a loadable copy: the missing and corrupted paths are tested."""
    with pytest.raises(DatasetUnavailable) as info:
        builtin.load_cifar10(LoadContext(tmp_path, allow_download=False))
    msg = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg
    for f in ["data_batch_1", "data_batch_5", "test_batch", "batches.meta"]:
        assert f in msg
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"not the real pickle")
    with pytest.raises(
        DatasetUnavailable, match="checksum does not match the official file: data_batch_1"
    ):
        builtin.load_cifar10(LoadContext(tmp_path, allow_download=False))


@pytest.mark.parametrize(
    ("name", "shape", "n", "y_dtype"),
    [
        ("digits", (1, 8, 8), 1797, torch.int64),
        ("iris", (4,), 150, torch.int64),
        ("wine", (13,), 178, torch.int64),
        ("breast_cancer", (30,), 569, torch.int64),
        ("diabetes", (10,), 442, torch.float32),
        ("xor", (2,), 2500, torch.int64),
        ("linear", (3,), 5, torch.float32),
    ],
)
def test_bundled_datasets_match_their_info(
    name: str, shape: tuple[int, ...], n: int, y_dtype: torch.dtype
) -> None:
    source = BUILTIN_DATASETS[name]
    loaded = source.load(LoadContext(Path("/nonexistent")))
    X, y = loaded.train.X, loaded.train.y
    assert tuple(X.shape) == (n, *shape) == (source.info.samples, *source.info.input_shape)
    assert X.dtype == torch.float32 and y.dtype == y_dtype
    if source.info.task == "regression":
        assert y.shape == (n, 1)
    else:
        assert y.shape == (n,) and int(y.max()) == (source.info.num_classes or 0) - 1
    assert loaded.test is None


def test_digits_are_scaled_images() -> None:
    X = builtin.load_digits(LoadContext(Path("."))).train.X
    assert float(X.min()) == 0.0 and float(X.max()) == 1.0


def test_xor_is_the_same_every_time_and_is_xor() -> None:
    a = builtin.load_xor(LoadContext(Path("."))).train
    b = builtin.load_xor(LoadContext(Path("."))).train
    assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y)
    bits = a.X.round().clamp(0, 1)
    assert torch.equal(a.y, (bits[:, 0] != bits[:, 1]).long())
    noise = a.X - bits
    assert 0.08 < float(noise.std()) < 0.12


def test_mnist_through_the_pipeline_evaluates_on_the_official_test_split(
    tmp_path: Path, run_job: RunJob
) -> None:
    write_mnist(tmp_path / "datasets", "MNIST", n_train=60, n_test=20)
    result = run_job(
        {
            "dataset": {"name": "mnist", "val_fraction": 0.2},
            "model": {"arch": "cnn", "channels": [4]},
            "training": {"epochs": 1, "batch_size": 16},
        }
    )
    assert result.evaluation is not None
    assert result.evaluation["split"] == "test" and result.evaluation["samples"] == 20


@pytest.mark.parametrize("name", ["digits", "iris", "wine", "breast_cancer", "xor"])
def test_builtin_class_counts_are_the_datas_own(tmp_path: Path, name: str) -> None:
    """The counts written out in the registry (so listing built-ins loads nothing) match the
    data the loader produces."""
    source = BUILTIN_DATASETS[name]
    loaded = source.load(LoadContext(tmp_path, allow_download=False))
    counts = torch.bincount(loaded.train.y, minlength=source.info.num_classes or 0).tolist()
    assert counts == source.info.class_counts


def test_every_builtin_classifier_lists_a_count_per_class_summing_to_its_samples() -> None:
    for source in BUILTIN_DATASETS.values():
        info = source.info
        if info.task != "classification":
            assert info.class_counts is None, info.name
            continue
        assert info.class_counts is not None, info.name
        assert len(info.class_counts) == info.num_classes, info.name
        assert sum(info.class_counts) == info.samples, info.name

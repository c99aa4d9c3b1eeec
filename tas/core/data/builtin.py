"""Loaders of the built-in datasets. Each returns whole tensors (`Arrays`), never a per-sample Dataset:
the training loop slices tensors, so a loader's job is to produce them once, in the documented shape.

- scikit-learn's bundled sets (no network): digits as (N, 1, 8, 8) images scaled to [0, 1], the tabular
  ones as (N, features); regression targets float32 (N, 1), class labels int64 (N,).
- Two toy problems: `xor` (2,500 noisy random bit pairs, label = their XOR) and `linear` (five
  rows of three scores and their total, a 3-feature linear regression).
- torchvision's MNIST, Fashion-MNIST and CIFAR-10 through torchvision's own dataset classes, read from
  `ctx.datasets_dir` in torchvision's on-disk layout, downloaded only when `ctx.allow_download`;
  their images stay uint8 (N, C, H, W), a quarter of float32's bytes (`dataset.as_float` decodes a
  batch on the training device)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from tas.core.data.dataset import Arrays, DatasetUnavailable, LoadContext, Loaded

#: The XOR dataset's generator seed: the same 2,500 points on every machine, in every run.
XOR_SEED = 4
XOR_SIZE = 2500
XOR_NOISE_STD = 0.1


def _sklearn(fn_name: str) -> tuple[np.ndarray, np.ndarray]:
    import sklearn.datasets

    X, y = getattr(sklearn.datasets, fn_name)(return_X_y=True)
    return np.asarray(X), np.asarray(y)


def _classes(fn_name: str) -> Loaded:
    X, y = _sklearn(fn_name)
    arrays = Arrays(torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64))
    return Loaded(arrays, notes={"source": f"sklearn.datasets.{fn_name}"})


def load_digits(ctx: LoadContext) -> Loaded:
    """8×8 grey images with values 0..16, scaled to [0, 1] like the torchvision image sets."""
    X, y = _sklearn("load_digits")
    images = torch.as_tensor(X, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    return Loaded(
        Arrays(images, torch.as_tensor(y, dtype=torch.int64)),
        notes={"source": "sklearn.datasets.load_digits"},
    )


def load_iris(ctx: LoadContext) -> Loaded:
    return _classes("load_iris")


def load_wine(ctx: LoadContext) -> Loaded:
    return _classes("load_wine")


def load_breast_cancer(ctx: LoadContext) -> Loaded:
    return _classes("load_breast_cancer")


def load_diabetes(ctx: LoadContext) -> Loaded:
    X, y = _sklearn("load_diabetes")
    arrays = Arrays(
        torch.as_tensor(X, dtype=torch.float32),
        torch.as_tensor(y, dtype=torch.float32).reshape(-1, 1),
    )
    return Loaded(arrays, notes={"source": "sklearn.datasets.load_diabetes"})


def load_xor(ctx: LoadContext) -> Loaded:
    """The classic tutorial `XORDataset(size=2500)`: two random bits, label = their XOR, plus gaussian noise
    (std 0.1) on the inputs. A private generator makes it the same dataset every time."""
    g = torch.Generator().manual_seed(XOR_SEED)
    bits = torch.randint(0, 2, (XOR_SIZE, 2), generator=g).to(torch.float32)
    labels = (bits.sum(dim=1) == 1).to(torch.int64)
    X = bits + XOR_NOISE_STD * torch.randn(bits.shape, generator=g)
    return Loaded(
        Arrays(X, labels), notes={"source": "generated (noisy XOR)", "generator_seed": XOR_SEED}
    )


def load_linear(ctx: LoadContext) -> Loaded:
    """Five samples: three scores → a total, fitted with `nn.Linear(3, 1)`."""
    X = torch.tensor(
        [[73, 80, 75], [93, 88, 93], [89, 91, 90], [96, 98, 100], [73, 66, 70]], dtype=torch.float32
    )
    y = torch.tensor([[152], [185], [180], [196], [142]], dtype=torch.float32)
    return Loaded(Arrays(X, y), notes={"source": "five samples of three scores and their total"})


# --- torchvision ----------------------------------------------------------------------------------


def _unavailable(
    name: str, folder: Path, expected: list[str], problems: list[str], why: str
) -> DatasetUnavailable:
    return DatasetUnavailable(
        f"dataset {name!r}: {why}. Expected in directory {folder}: {', '.join(expected)}"
        f" ({'; '.join(problems)})."
        " Put those files there (torchvision's layout), or allow downloads (TAS_ALLOW_DOWNLOAD=true)"
    )


def _images(data: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) → uint8 (N, 1, H, W): kept as the bytes they are (`as_float` reads them as
    value / 255 per batch, on the training device)."""
    return data.to(torch.uint8).unsqueeze(1).contiguous()


def _load_mnist_like(name: str, cls_name: str, ctx: LoadContext) -> Loaded:
    """MNIST-format sets: torchvision reads `<root>/<ClassName>/raw/*-idx?-ubyte`. torchvision checks
    only that the four raw files exist; gzipped copies (as downloaded) are unpacked beside them."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import extract_archive

    cls: type[tvd.MNIST] = getattr(tvd, cls_name)  # FashionMNIST is an MNIST subclass
    root = Path(ctx.datasets_dir)
    raw = root / cls_name / "raw"
    expected = [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
    for fname in expected:
        if not (raw / fname).is_file() and (raw / f"{fname}.gz").is_file():
            extract_archive(str(raw / f"{fname}.gz"), str(raw))
    missing = [f for f in expected if not (raw / f).is_file()]
    if missing and not ctx.allow_download:
        raise _unavailable(
            name,
            raw,
            expected,
            [f"missing: {', '.join(missing)}"],
            "files not found and downloading is off",
        )
    try:
        train = cls(str(root), train=True, download=ctx.allow_download)
        test = cls(str(root), train=False, download=False)
    except Exception as exc:
        problems = [f"missing: {', '.join(missing)}"] if missing else []
        raise _unavailable(
            name,
            raw,
            expected,
            [*problems, f"{type(exc).__name__}: {exc}"],
            "could not be read or downloaded",
        ) from exc
    return Loaded(
        train=Arrays(_images(train.data), train.targets.to(torch.int64)),
        test=Arrays(_images(test.data), test.targets.to(torch.int64)),
        notes={"source": f"torchvision.datasets.{cls_name}", "root": str(root)},
    )


def load_mnist(ctx: LoadContext) -> Loaded:
    return _load_mnist_like("mnist", "MNIST", ctx)


def load_fashion_mnist(ctx: LoadContext) -> Loaded:
    return _load_mnist_like("fashion_mnist", "FashionMNIST", ctx)


def _cifar_images(data: np.ndarray) -> torch.Tensor:
    """torchvision's HWC uint8 array → uint8 (N, 3, H, W), in one copy."""
    hwc = torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8))
    return hwc.permute(0, 3, 1, 2).contiguous()


def load_cifar10(ctx: LoadContext) -> Loaded:
    """CIFAR-10's python pickles in `<root>/cifar-10-batches-py`. torchvision unpickles them only after
    their md5 matches the official release, so only the genuine files are ever unpickled."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import check_integrity

    cls = tvd.CIFAR10
    root = Path(ctx.datasets_dir)
    folder = root / cls.base_folder
    entries = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    expected = [f for f, _ in entries]
    problems: list[str] = []
    for fname, md5 in entries:
        path = folder / fname
        if not path.is_file():
            problems.append(f"missing: {fname}")
        elif not check_integrity(str(path), md5):
            problems.append(f"checksum does not match the official file: {fname}")
    if problems and not ctx.allow_download:
        raise _unavailable(
            "cifar10",
            folder,
            expected,
            problems,
            "files not found or not the official ones, and downloading is off",
        )
    try:
        train = cls(str(root), train=True, download=ctx.allow_download)
        test = cls(str(root), train=False, download=False)
    except Exception as exc:
        raise _unavailable(
            "cifar10",
            folder,
            expected,
            [*problems, f"{type(exc).__name__}: {exc}"],
            "could not be read or downloaded",
        ) from exc
    return Loaded(
        train=Arrays(_cifar_images(train.data), torch.as_tensor(train.targets, dtype=torch.int64)),
        test=Arrays(_cifar_images(test.data), torch.as_tensor(test.targets, dtype=torch.int64)),
        notes={"source": "torchvision.datasets.CIFAR10", "root": str(root)},
    )

"""NPZ: `np.savez(path, X=features, y=labels)`. X is N×F (features), N×H×W or N×C×H×W (images);
y is N labels or N×d regression targets. Nothing is unpickled: each array's header (shape, dtype) is
judged before its data is read, and object arrays are refused.

The scale of X: a uint8 image array (N×H×W or N×C×H×W) stays uint8, a byte a pixel, and is read as
the built-in image sets are (pixel / 255, then the dataset's normalisation, per batch on the training
device): a quarter of float32's bytes in the scratch file, the preprocessing cache and memory, so a
million CIFAR-sized images take 3 GB, not 12. `/predict` then takes pixel / 255 (values in [0, 1]) or
PNG/JPEG images, as for any image model. Any other X (features, float or other integer images) is
kept as it is, cast to float32, so `/predict` inputs use the same scale. `size` resizes image arrays
(uint8 ones are rounded back to uint8)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from tas.core.data.archive import UploadError, UploadLimits, files, nbytes, open_archive
from tas.core.data.dataset import Arrays, Task
from tas.core.data.formats.base import NO_TARGET, Contents, Format, Probe, ReadOptions
from tas.core.data.formats.common import check_classes, check_samples, encode_target, listing
from tas.core.data.images import resize
from tas.core.data.scratch import ScratchArray

#: Bytes of X (as float32) read, converted and checked at a time.
CHUNK_BYTES = 16 << 20


def _kept_dtype(h: _NpyHeader) -> np.dtype[Any]:
    """uint8 for a uint8 image array (a byte a pixel, read as pixel / 255 per batch), else float32."""
    return np.dtype(np.uint8) if h.dtype == np.uint8 and len(h.shape) in (3, 4) else _FLOAT


_FLOAT = np.dtype(np.float32)


@dataclass(frozen=True)
class _NpyHeader:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran: bool = False


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> _NpyHeader:
    """Shape and dtype from the .npy header, before any data is read: object arrays (pickles) and
    headers that promise more data than the entry holds are refused here."""
    fmt = np.lib.format
    try:
        with zf.open(info) as fp:
            version = fmt.read_magic(fp)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read(fp)
            offset = fp.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UploadError(f"array {name!r} is not a valid .npy array: {exc}") from None
    if dtype.hasobject:
        raise UploadError(
            f"array {name!r} holds Python objects (dtype object), which would need unpickling;"
            " save numbers or strings (e.g. y.astype(str)) with np.savez"
        )
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset + need > info.file_size:
        raise UploadError(
            f"array {name!r} is truncated: its header promises shape {tuple(shape)} ({nbytes(need)})"
            f" but the entry holds {nbytes(info.file_size - offset)}"
        )
    return _NpyHeader(name, tuple(int(s) for s in shape), dtype, bool(fortran))


def _npy_read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> np.ndarray:
    try:
        with zf.open(info) as fp:
            return np.lib.format.read_array(fp, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UploadError(f"array {name!r} cannot be read: {exc}") from None


def read(path: Path, options: ReadOptions, limits: UploadLimits) -> Contents:
    """`np.load(path, allow_pickle=False)`, done by hand on the checked archive so that each array's
    header (shape, dtype) is judged before its data is read."""
    with open_archive(path, limits, "NPZ archive") as zf:
        arrays = {i.filename[:-4]: i for i in files(zf) if i.filename.endswith(".npy")}
        missing = [k for k in ("X", "y") if k not in arrays]
        if missing:
            raise UploadError(
                f"the NPZ has no array {' or '.join(repr(m) for m in missing)}; arrays present:"
                f" {listing(sorted(arrays)) or 'none'}",
                hint="save features and labels as np.savez(path, X=features, y=labels)",
            )
        hx = _npy_header(zf, arrays["X"], "X")
        hy = _npy_header(zf, arrays["y"], "y")
        _check_npz_shapes(hx, hy, limits)
        X = torch.from_numpy(_read_X(zf, arrays["X"], hx, path))
        y_raw = _npy_read(zf, arrays["y"], "y")
    kind: Literal["tabular", "image"] = "tabular" if X.dim() == 2 else "image"
    if X.dim() == 3:
        X = X.unsqueeze(1)
    if options.size is not None:
        if kind != "image":
            raise UploadError(
                f"size applies to images; this NPZ's X is {X.shape[0]}×{X.shape[1]} features",
                field="size",
            )
        X = _resized(X, options.size, path)
    task, y, class_names = _npz_target(y_raw, options.task)
    counts = check_classes(y, class_names, "array 'y'", "file") if class_names else None
    return Contents(
        arrays=Arrays(X, y), task=task, kind=kind, class_names=class_names, class_counts=counts
    )


def _read_X(zf: zipfile.ZipFile, info: zipfile.ZipInfo, h: _NpyHeader, near: Path) -> np.ndarray:
    """X in its kept dtype (`_kept_dtype`: uint8 images as they are, else float32), `CHUNK_BYTES`
    of it at a time: each piece read from the entry, converted, checked finite and written to a
    memory-mapped scratch file, so an NPZ larger than memory is read holding one piece. (A
    Fortran-ordered array, which `np.savez` writes only when given one, is read whole.)"""
    kept = _kept_dtype(h)
    if h.fortran:
        X = np.ascontiguousarray(_npy_read(zf, info, "X"), dtype=kept)
        _check_finite(X, 0)
        return X
    row_shape = h.shape[1:]
    row_items = int(np.prod(row_shape, dtype=np.int64))
    piece = max(1, CHUNK_BYTES // max(1, row_items * max(4, h.dtype.itemsize)))
    try:
        with zf.open(info) as fp, ScratchArray(row_shape, kept, near=near) as out:
            fmt = np.lib.format
            version = fmt.read_magic(fp)
            header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            header(fp)  # leaves fp at the data
            for start in range(0, h.shape[0], piece):
                rows = min(piece, h.shape[0] - start)
                data = fp.read(rows * row_items * h.dtype.itemsize)
                block = np.frombuffer(data, dtype=h.dtype).reshape(rows, *row_shape)
                values = block.astype(kept)
                del data, block
                _check_finite(values, start)
                out.append(values)
            return out.array()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UploadError(f"array 'X' cannot be read: {exc}") from None


def _check_finite(X: np.ndarray, first: int) -> None:
    if X.dtype.kind not in "fc":
        return  # integers (uint8 pixels) are always finite
    finite = np.isfinite(X.reshape(X.shape[0], -1)).all(axis=1)
    if not finite.all():
        raise UploadError(
            f"array 'X' has a NaN or infinite value in sample {first + int(np.argmin(finite))}"
        )


def _resized(X: torch.Tensor, size: tuple[int, int], near: Path) -> torch.Tensor:
    """Images resized a piece at a time into a scratch file (`resize` itself fills one array).
    uint8 pixels are resized as pixel values and rounded back to uint8, so they stay compact (the
    bilinear filter keeps values within 0..255)."""
    piece = max(1, CHUNK_BYTES // max(1, 4 * X.shape[1] * size[0] * size[1]))
    pixels = X.dtype == torch.uint8
    with ScratchArray(
        (X.shape[1], *size), X.numpy().dtype if pixels else np.float32, near=near
    ) as out:
        for start in range(0, X.shape[0], piece):
            done = resize(X[start : start + piece], size)
            if pixels and done.dtype != torch.uint8:
                done = done.round_().clamp_(0, 255).to(torch.uint8)
            out.append(done.numpy())
        return torch.from_numpy(out.array())


def _check_npz_shapes(hx: _NpyHeader, hy: _NpyHeader, limits: UploadLimits) -> None:
    if hx.dtype.kind not in "biuf":
        raise UploadError(f"array 'X' must hold numbers; its dtype is {hx.dtype}")
    if hy.dtype.kind not in "biufUS":
        raise UploadError(f"array 'y' must hold numbers or strings; its dtype is {hy.dtype}")
    if len(hx.shape) not in (2, 3, 4) or 0 in hx.shape[1:]:
        raise UploadError(
            f"array 'X' has shape {hx.shape}; expected N×F (features), N×H×W or N×C×H×W (images)"
        )
    if len(hy.shape) not in (1, 2):
        raise UploadError(f"array 'y' has shape {hy.shape}; expected N (labels) or N×d (targets)")
    if hx.shape[0] != hy.shape[0]:
        raise UploadError(
            f"X has {hx.shape[0]:,} samples but y has {hy.shape[0]:,}; they must match row for row"
        )
    check_samples(hx.shape[0], limits, "the NPZ")
    kept = _kept_dtype(hx)
    need = int(np.prod(hx.shape, dtype=np.int64)) * kept.itemsize
    if need > limits.max_array_bytes:
        raise UploadError(
            f"array 'X' {hx.shape} takes {nbytes(need)} as {kept}; the limit is"
            f" {nbytes(limits.max_array_bytes)}",
            status=413,
        )


def _npz_target(y: np.ndarray, task: Task | None) -> tuple[Task, torch.Tensor, list[str] | None]:
    if y.dtype.kind == "S":
        y = np.char.decode(y, "utf-8", errors="replace")
    if y.ndim == 2 and y.shape[1] != 1:
        if task == "classification":
            raise UploadError(
                f"class labels must be one per sample; y has shape {y.shape} (one-hot? use"
                " y.argmax(1))",
                field="task",
            )
        if y.dtype.kind not in "biuf":
            raise UploadError(f"a {y.shape[1]}-column y must hold numbers; its dtype is {y.dtype}")
        values = torch.from_numpy(np.asarray(y, dtype=np.float32))
        bad = ~torch.isfinite(values).all(dim=1)
        if bool(bad.any()):
            raise UploadError(
                f"array 'y' has a NaN or infinite value in sample {int(bad.nonzero()[0, 0])}"
            )
        return "regression", values, None
    keys, codes = np.unique(y.reshape(-1), return_inverse=True)
    return encode_target(keys, codes.reshape(-1), task, "dtype", "array 'y'")


def sniff(probe: Probe) -> bool:
    """A ZIP named .npz, or one that holds nothing but .npy arrays."""
    return probe.suffix == ".npz" or (
        bool(probe.entries) and all(n.endswith(".npy") for n in probe.entries)
    )


FORMAT = Format(
    "npz",
    container="zip",
    sniff=sniff,
    read=read,
    refuses={"target": NO_TARGET.format(name="npz", labels="its array y")},
)

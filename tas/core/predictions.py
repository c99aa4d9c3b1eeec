"""Per-sample predictions on the held-out splits, so a user can look at the mistakes and compare
with their own baseline on exactly the same samples.

The evaluate stage writes one file per held-out split, `<job_dir>/predictions/<split>.npz`, from the
same forward pass (and the same weights) as the metrics it reports and the model it registers.
The files are plain numeric and string arrays (`np.load(..., allow_pickle=False)` reads them; no
object is pickled):

- `index` int64 (N,): the sample's row in the data before splitting (for an official test split,
  its row in the source's test set), so the split can be rebuilt outside tas;
- classification: `label` and `predicted` int64 (N,), `probability` float32 (N,) (of the
  predicted class) and `class_names` (K,) when the classes are named;
- regression: `value` and `predicted` float64 (N, d), in the data's units.

A split can hold millions of samples (an upload of up to 10M rows), so a reader never loads one
whole: `open_split` maps the file's arrays without reading them (`np.savez` stores each `.npy`
uncompressed, so its bytes lie contiguous in the ZIP and can be memory-mapped), and `rows` and
`iter_csv` slice them, reading only the pages of the rows asked for."""

from __future__ import annotations

import csv
import io
import math
import mmap
import shutil
import struct
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch

from tas.core import fsio

DIRNAME = "predictions"
SPLITS = ("val", "test")
Target = Literal["index", "binary", "value"]


def path_for(job_dir: Path | str, split: str) -> Path:
    return Path(job_dir) / DIRNAME / f"{split}.npz"


def per_sample(
    index: torch.Tensor,
    out: torch.Tensor,
    y: torch.Tensor,
    target: Target,
    class_names: list[str] | None = None,
    inverse: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, np.ndarray]:
    """The arrays of one split from the model's raw outputs `out` and the true targets `y` as
    the data holds them (class indices, or values in the data's units)."""
    arrays: dict[str, np.ndarray] = {"index": index.cpu().numpy().astype(np.int64)}
    out = out.detach().float()
    if target == "value":
        values = inverse(out) if inverse is not None else out
        arrays["value"] = y.cpu().double().reshape(y.shape[0], -1).numpy()
        arrays["predicted"] = values.cpu().double().reshape(out.shape[0], -1).numpy()
        return arrays
    if target == "binary":
        p1 = torch.sigmoid(out.reshape(-1))
        predicted = (out.reshape(-1) > 0).long()
        probability = torch.where(predicted == 1, p1, 1 - p1)
    else:
        probability, predicted = torch.softmax(out, dim=1).max(dim=1)
    arrays["label"] = y.cpu().reshape(-1).long().numpy()
    arrays["predicted"] = predicted.cpu().numpy().astype(np.int64)
    arrays["probability"] = probability.cpu().numpy().astype(np.float32)
    if class_names:
        arrays["class_names"] = np.asarray([str(n) for n in class_names], dtype=np.str_)
    return arrays


def write_all(job_dir: Path | str, splits: dict[str, dict[str, np.ndarray]]) -> dict[str, int]:
    """Write every split's file into the job's predictions directory at once (a re-run replaces
    the whole directory atomically); returns the sample count per split."""
    final = Path(job_dir) / DIRNAME
    tmp = fsio.new_tmp_dir(Path(job_dir))
    try:
        for split, arrays in splits.items():
            buf = io.BytesIO()
            np.savez(buf, **arrays)  # type: ignore[arg-type]
            fsio.write_durable(tmp / f"{split}.npz", buf.getvalue())
        fsio.publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {split: int(arrays["index"].shape[0]) for split, arrays in splits.items()}


def read(path: Path | str) -> dict[str, np.ndarray]:
    """A split's arrays, read whole (FileNotFoundError when it was not written)."""
    with np.load(Path(path), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


#: A ZIP local file header up to its variable parts: signature, version, flags, method, time,
#: date, crc, sizes, then the name's and the extra field's lengths.
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_LOCAL_SIGNATURE = b"PK\x03\x04"
#: Rows of CSV text built at a time by `iter_csv` (about 0.5-1 MB of text).
CSV_BLOCK = 10_000


def _mapped(buf: mmap.mmap, raw: IO[bytes], info: zipfile.ZipInfo) -> np.ndarray | None:
    """The array a stored (uncompressed) member holds, as a view of the mapped file; None for a
    `.npy` version this reader does not parse (read whole instead). ValueError when the member is
    not a plain array that fits in it."""
    raw.seek(info.header_offset)
    header = raw.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size:
        raise ValueError(f"{info.filename}: truncated ZIP header")
    fields = _LOCAL_HEADER.unpack(header)
    if fields[0] != _LOCAL_SIGNATURE:
        raise ValueError(f"{info.filename}: not a ZIP member")
    # The local header's own name and extra lengths: its extra field (zip64) may differ from
    # the central directory's.
    start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
    raw.seek(start)
    version = np.lib.format.read_magic(raw)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(raw)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(raw)
    else:
        return None
    if dtype.hasobject:  # a pickle inside: never read
        raise ValueError(f"{info.filename}: holds Python objects")
    offset = raw.tell()
    count = math.prod(shape)
    if offset - start + count * dtype.itemsize > info.file_size:
        raise ValueError(f"{info.filename}: shorter than its header says")
    if count == 0:
        return np.empty(shape, dtype)
    flat = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def open_split(path: Path | str) -> dict[str, np.ndarray]:
    """A split's arrays as `read` answers them, without reading them: each a read-only view of
    the memory-mapped file, so slicing one reads only the rows asked for. The mapping lives as
    long as an array does, and stays valid if the file is replaced or deleted meanwhile (POSIX
    keeps an open file's pages; a re-run publishes a new file rather than rewriting this one).
    A member stored compressed (not written by tas) is read whole. FileNotFoundError when the
    split was not written; ValueError when the file is not a `.npz` of plain arrays."""
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as raw:
        try:
            zf = zipfile.ZipFile(raw)
        except zipfile.BadZipFile as exc:
            raise ValueError(f"{Path(path).name}: {exc}") from None
        buf = mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ)
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            array = None
            if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
                array = _mapped(buf, raw, info)
            if array is None:
                with zf.open(info) as member:
                    array = np.lib.format.read_array(member, allow_pickle=False)
            out[info.filename[: -len(".npy")]] = array
    # The mapping is closed when the last array viewing it goes (at once when none does).
    return out


def count(arrays: dict[str, np.ndarray]) -> int:
    """The split's sample count."""
    return int(arrays["index"].shape[0])


def task(arrays: dict[str, np.ndarray]) -> Literal["classification", "regression"]:
    return "regression" if "value" in arrays else "classification"


def _scalar_or_list(row: np.ndarray) -> float | list[float]:
    return float(row[0]) if row.shape[0] == 1 else [float(v) for v in row]


def _names(arrays: dict[str, np.ndarray]) -> list[str] | None:
    return arrays["class_names"].tolist() if "class_names" in arrays else None


def rows(
    arrays: dict[str, np.ndarray], start: int = 0, stop: int | None = None
) -> list[dict[str, Any]]:
    """One JSON-able dict per sample of rows [start, stop) (all of them by default).
    Classification: index, label, class_name, predicted, predicted_class_name, probability,
    correct. Regression: index, value, predicted, error (predicted - value); scalars for one target
    column, lists for several."""
    return _rows(arrays, start, stop, _names(arrays))


def _rows(
    arrays: dict[str, np.ndarray], start: int, stop: int | None, names: list[str] | None
) -> list[dict[str, Any]]:
    index = arrays["index"][start:stop].tolist()
    if "value" in arrays:
        value = np.asarray(arrays["value"][start:stop])
        predicted = np.asarray(arrays["predicted"][start:stop])
        return [
            {
                "index": i,
                "value": _scalar_or_list(value[k]),
                "predicted": _scalar_or_list(predicted[k]),
                "error": _scalar_or_list(predicted[k] - value[k]),
            }
            for k, i in enumerate(index)
        ]

    def name(c: int) -> str | None:
        return names[c] if names is not None and 0 <= c < len(names) else None

    label = arrays["label"][start:stop].tolist()
    predicted_class = arrays["predicted"][start:stop].tolist()
    probability = arrays["probability"][start:stop].tolist()
    return [
        {
            "index": i,
            "label": t,
            "class_name": name(t),
            "predicted": p,
            "predicted_class_name": name(p),
            "probability": prob,
            "correct": t == p,
        }
        for i, t, p, prob in zip(index, label, predicted_class, probability, strict=True)
    ]


def csv_header(arrays: dict[str, np.ndarray]) -> list[str]:
    if "value" in arrays:
        d = arrays["value"].shape[1]
        cols = ["value", "predicted", "error"]
        return ["index", *(cols if d == 1 else [f"{c}_{j}" for c in cols for j in range(d)])]
    return [
        "index",
        "label",
        "class_name",
        "predicted",
        "predicted_class_name",
        "probability",
        "correct",
    ]


def _csv_block(
    arrays: dict[str, np.ndarray], start: int, stop: int, names: list[str] | None
) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if "value" in arrays:
        value = np.asarray(arrays["value"][start:stop])
        predicted = np.asarray(arrays["predicted"][start:stop])
        error = predicted - value
        for k, i in enumerate(arrays["index"][start:stop].tolist()):
            writer.writerow(
                [i, *map(repr, [*value[k].tolist(), *predicted[k].tolist(), *error[k].tolist()])]
            )
        return out.getvalue()
    for r in _rows(arrays, start, stop, names):
        writer.writerow(
            [
                r["index"],
                r["label"],
                r["class_name"] or "",
                r["predicted"],
                r["predicted_class_name"] or "",
                repr(r["probability"]),
                "true" if r["correct"] else "false",
            ]
        )
    return out.getvalue()


def iter_csv(
    arrays: dict[str, np.ndarray],
    start: int = 0,
    stop: int | None = None,
    block: int = CSV_BLOCK,
) -> Iterator[str]:
    """The rows [start, stop) as CSV text with a header, `block` rows at a time, so a whole
    split streams in bounded memory; several target columns become value_0…, predicted_0…"""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(csv_header(arrays))
    yield out.getvalue()
    stop = count(arrays) if stop is None else min(stop, count(arrays))
    names = None if "value" in arrays else _names(arrays)
    for a in range(start, stop, block):
        yield _csv_block(arrays, a, min(a + block, stop), names)


def to_csv(arrays: dict[str, np.ndarray]) -> str:
    """The whole split as one CSV text (`iter_csv` joined)."""
    return "".join(iter_csv(arrays))

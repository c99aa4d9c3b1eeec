"""Uploaded datasets: a CSV, an NPZ, or a ZIP of images (class folders, or an annotations CSV beside
the images, file name and label per row), read into whole tensors with a schema that says what was inferred.

`read_upload` is the upload-time reader (the API calls it once, stores the schema it returns) and
`load_upload` the job-time one: it re-reads the stored original with the schema's *resolved* options
(format, target, task, size as they were decided) and refuses a result that no longer matches.

Every refusal is an `UploadError` (a `DataError`) that names the form field to blame and what is wrong
where: the column and row, the archive entry, the image and its size. Archives are judged from their
central directory before any entry is read (`tas.core.data.archive`); images from their headers before
they are decoded (`tas.core.data.images`). Nothing is extracted to disk and nothing is unpickled.

Choices a user may want to know:
- CSV: the target is `options.target`, else a column named "target" or "label"; every other column
  is a numeric feature. A text target gives classes (sorted names); a numeric one gives classes when
  it holds integers with at most 50 distinct values, fewer than half the rows, else regression.
- Annotations CSV (file name, label): labels that are integers or text give classes; non-integral
  numbers give regression. NPZ `y`: integer, bool or string dtype gives classes, float regression.
  `task` overrides any of these; numeric class labels keep their sorted values as class names.
- Class folders: files beside the class folders (a README) are ignored; a file inside a class folder
  that is not .png/.jpg/.jpeg is refused rather than silently left out of that class.
- NPZ values are kept as they are (cast to float32): /predict inputs use the same scale. Images from
  archives are scaled to [0, 1]; all grey gives C=1, any colour image makes every image RGB (C=3)."""

from __future__ import annotations

import csv
import io
import itertools
import posixpath
import re
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch

from tas.core.data.archive import (
    UploadError,
    UploadLimits,
    files,
    nbytes,
    num,
    open_archive,
    parts,
)
from tas.core.data.images import is_image_name, read_images, resize
from tas.core.data.registry import Arrays, DatasetInfo, Loaded
from tas.core.errors import DataError

__all__ = [
    "FORMATS",
    "ParsedUpload",
    "UploadError",
    "UploadLimits",
    "UploadOptions",
    "info_from_schema",
    "load_upload",
    "read_upload",
]

Format = Literal["csv", "npz", "image_folder", "image_annotations"]
Task = Literal["classification", "regression"]
FORMATS: tuple[str, ...] = ("csv", "npz", "image_folder", "image_annotations")
TASKS: tuple[str, ...] = ("classification", "regression")
_OPTION_KEYS = ("format", "target", "task", "size")
#: The largest side `size` may resize an image to (pixels).
MAX_SIDE = 4096

#: A numeric CSV target is class labels when it holds integers with at most this many distinct
#: values (and fewer than half the rows); otherwise it is a quantity to regress.
MAX_INFERRED_CLASSES = 50
#: A stratified split needs two samples of every class (one to train on, one to hold out).
MIN_CLASS_SAMPLES = 2
#: Candidate CSV delimiters, in order of preference when the header splits equally well on several.
DELIMITERS = (",", ";", "\t", "|")
#: Folders beside an annotations CSV that may hold its images (a custom Dataset's usual img_dir).
IMAGE_DIRS = ("", "images", "img", "imgs")
_SNIFF_BYTES = 8192
#: Target codes ride in the float32 table: exact up to 2**24 distinct values.
_EXACT_CODES = 1 << 24
#: Magic bytes of files that are surely not a CSV, NPZ or ZIP, to name them in the 415.
_FOREIGN = (
    (b"\x1f\x8b", "a gzip file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x89PNG", "a single PNG image"),
    (b"\xff\xd8\xff", "a single JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF"),
    (b"PAR1", "a Parquet file"),
    (b"\x89HDF", "an HDF5 file"),
    (b"\xd0\xcf\x11\xe0", "an old Excel/Office file"),
    (b"\x80", "a Python pickle"),
    (b"\xff\xfe", "UTF-16 text (save it as UTF-8)"),
    (b"\xfe\xff", "UTF-16 text (save it as UTF-8)"),
)
_TEXT_SUFFIXES = ("", ".csv", ".tsv", ".txt", ".dat")


# ---------------------------------------------------------------------------------------------
# Options and the result


def _parse_size(value: Any) -> tuple[int, int] | None:
    """(H, W) from [H, W], (H, W), "HxW", "H,W", "H×W" or one number S for S×S."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        items: list[Any] = re.split(r"\s*[x×X,]\s*", value.strip())
    elif isinstance(value, int | float):
        items = [value]
    else:
        items = list(value)
    try:
        sides = [int(s) for s in items if not isinstance(s, bool) and float(s) == int(s)]
    except (TypeError, ValueError):
        sides = []
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2 or len(items) not in (1, 2) or min(sides) < 1:
        raise UploadError(
            f"size must be one positive integer S (S×S) or two, H×W (e.g. 28 or 32x32); got {value!r}",
            field="size",
        )
    if max(sides) > MAX_SIDE:
        raise UploadError(
            f"size {value!r}: each side must be from 1 to {MAX_SIDE} pixels", field="size"
        )
    return sides[0], sides[1]


@dataclass(frozen=True)
class UploadOptions:
    """How to read an upload. None means inferred; a `ParsedUpload` carries them resolved."""

    format: Format | None = None
    target: str | None = None
    task: Task | None = None
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise UploadError(
                f"unknown format {self.format!r}; allowed: {', '.join(FORMATS)} (or leave it out)",
                field="format",
            )
        if self.task is not None and self.task not in TASKS:
            raise UploadError(
                f"unknown task {self.task!r}; allowed: {', '.join(TASKS)} (or leave it out)",
                field="task",
            )
        if self.target is not None and not isinstance(self.target, str):
            raise UploadError(f"target must be a column name; got {self.target!r}", field="target")
        if self.target is not None and not self.target.strip():
            object.__setattr__(self, "target", None)
        object.__setattr__(self, "size", _parse_size(self.size))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "target": self.target,
            "task": self.task,
            "size": list(self.size) if self.size else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UploadOptions:
        """From `to_dict` or from form fields: blank strings (and format "auto") mean unset; size may
        be "28", "32x32" or [H, W]."""
        unknown = sorted(set(d) - set(_OPTION_KEYS))
        if unknown:
            raise UploadError(
                f"unknown upload option {unknown[0]!r}; allowed: {', '.join(_OPTION_KEYS)}",
                field=unknown[0],
            )

        def text(key: str) -> Any:
            v = d.get(key)
            return v.strip() or None if isinstance(v, str) else v

        fmt = text("format")
        return cls(
            format=None if fmt == "auto" else fmt,
            target=text("target"),
            task=text("task"),
            size=d.get("size"),
        )


@dataclass
class ParsedUpload:
    format: str
    #: X float32 (N, *input_shape); y int64 (N,) for classes, float32 (N, d) for regression.
    arrays: Arrays
    task: Task
    input_shape: tuple[int, ...]
    kind: Literal["tabular", "image"]
    class_names: list[str] | None
    class_counts: dict[str, int] | None
    feature_names: list[str] | None
    #: Resolved: the format, target column and task as decided, so a re-read decides nothing anew.
    options: UploadOptions

    def schema(self) -> dict[str, Any]:
        """JSON-able; what the API stores and shows, and what `load_upload` checks a re-read against."""
        y = self.arrays.y
        return {
            "format": self.format,
            "task": self.task,
            "kind": self.kind,
            "samples": len(self.arrays),
            "input_shape": list(self.input_shape),
            "num_classes": len(self.class_names) if self.class_names is not None else None,
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "class_counts": dict(self.class_counts) if self.class_counts is not None else None,
            "target_dim": 1 if self.task == "classification" else int(y.shape[1]),
            "feature_names": list(self.feature_names) if self.feature_names is not None else None,
            "options": self.options.to_dict(),
        }

    def info(self, name: str) -> DatasetInfo:
        return info_from_schema(name, self.schema())


def info_from_schema(name: str, schema: Mapping[str, Any]) -> DatasetInfo:
    """The `DatasetInfo` of a stored upload, without reading its file. Uploads have no official test
    split (a job holds out `dataset.test_fraction`) and are standardised by default, images too."""
    names = schema.get("class_names")
    return DatasetInfo(
        name=name,
        task=schema["task"],
        input_shape=tuple(int(s) for s in schema["input_shape"]),
        num_classes=schema.get("num_classes"),
        class_names=list(names) if names is not None else None,
        target_dim=int(schema.get("target_dim") or 1),
        kind=schema["kind"],
        default_normalize=True,
        has_test_split=False,
        samples=schema.get("samples"),
        feature_names=list(features) if (features := schema.get("feature_names")) else None,
    )


# ---------------------------------------------------------------------------------------------
# Entry points

#: Schema keys a re-read must reproduce exactly.
_STABLE_KEYS = (
    "format",
    "task",
    "kind",
    "samples",
    "input_shape",
    "num_classes",
    "class_names",
    "class_counts",
    "target_dim",
    "feature_names",
)


def read_upload(
    path: Path, filename: str, options: UploadOptions, limits: UploadLimits = UploadLimits()
) -> ParsedUpload:
    """Read an uploaded file (`filename` as the client named it: its extension helps to tell the
    format, with the content's magic bytes having the last word)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise UploadError("the file is empty")
    fmt = _detect_format(path, filename, options.format, limits)
    if options.size is not None and options.size[0] * options.size[1] > limits.max_pixels:
        raise UploadError(
            f"size {options.size[0]}×{options.size[1]} is {num(options.size[0] * options.size[1])}"
            f" pixels; the limit is {num(limits.max_pixels)}",
            field="size",
            status=413,
        )
    if options.size is not None and fmt == "csv":
        raise UploadError("size applies to images; this upload is a CSV", field="size")
    if options.target is not None and fmt in ("npz", "image_folder"):
        source = "its array y" if fmt == "npz" else "the class folder names"
        raise UploadError(
            f"target applies to CSV and annotations uploads; a {fmt} upload takes its labels from"
            f" {source}",
            field="target",
        )
    readers = {
        "csv": _read_csv,
        "npz": _read_npz,
        "image_folder": _read_image_folder,
        "image_annotations": _read_annotations,
    }
    return readers[fmt](path, options, limits)


def load_upload(
    path: Path, filename: str, schema: Mapping[str, Any], limits: UploadLimits = UploadLimits()
) -> Loaded:
    """Job time: the stored original, read with the schema's resolved options. A result that differs
    from the schema (a changed file, a changed reader) is a `DataError`, never a silent new dataset."""
    options = UploadOptions.from_dict(
        {**(schema.get("options") or {}), "format": schema["format"], "task": schema["task"]}
    )
    parsed = read_upload(path, filename, options, limits)
    now = parsed.schema()
    for key in _STABLE_KEYS:
        if now.get(key) != schema.get(key):
            raise DataError(
                f"the uploaded file {filename!r} no longer matches its schema: {key} was"
                f" {_short(schema.get(key))}, reading it now gives {_short(now.get(key))}",
                hint="upload the data again to get a dataset id for what the file holds now",
            )
    return Loaded(
        parsed.arrays,
        notes={"source": "upload", "format": parsed.format, "filename": filename},
    )


def _short(v: Any, limit: int = 120) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _names(items: list[str], limit: int = 20) -> str:
    """A list for a message: the first `limit`, then how many in all."""
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, … ({len(items)} in all)"


# ---------------------------------------------------------------------------------------------
# Format detection


def _detect_format(path: Path, filename: str, given: str | None, limits: UploadLimits) -> str:
    """The format from the magic bytes, then the name: a ZIP of .npy files (or a .npz) is an NPZ, a
    ZIP with a .csv is an annotations archive, any other ZIP class folders; text is a CSV."""
    with path.open("rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    suffix = Path(filename or "").suffix.lower()
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        if given == "csv":
            raise UploadError(
                "format 'csv' was given, but the file is a ZIP archive", field="format"
            )
        if given is not None:
            return given
        with open_archive(path, limits) as zf:
            names = [i.filename for i in files(zf)]
        if "[Content_Types].xml" in names:
            raise UploadError(
                "an Excel/Office document is not supported; export the sheet as CSV", status=415
            )
        if suffix == ".npz" or (names and all(n.endswith(".npy") for n in names)):
            return "npz"
        return (
            "image_annotations"
            if any(n.lower().endswith(".csv") for n in names)
            else "image_folder"
        )
    if head.startswith(b"\x93NUMPY"):
        raise UploadError(
            "a .npy file holds one array; save X and y together with np.savez(path, X=X, y=y)",
            status=415,
        )
    foreign = next((what for magic, what in _FOREIGN if head.startswith(magic)), None)
    binary = b"\x00" in head or foreign is not None
    if given is not None and given != "csv":
        what = foreign or ("a binary file" if binary else "text")
        raise UploadError(
            f"format {given!r} was given, but the file is not a ZIP/NPZ archive (it is {what})",
            field="format",
        )
    if binary:
        allowed = "allowed: CSV, NPZ, or a ZIP of PNG/JPEG images"
        if head.startswith((b"\x89PNG", b"\xff\xd8\xff")):
            allowed = "put images in a ZIP, one folder per class (cats/1.png)"
        raise UploadError(
            f"unsupported file type: {foreign or 'a binary file'}; {allowed}", status=415
        )
    if given is None and suffix not in _TEXT_SUFFIXES:
        raise UploadError(
            f"unsupported file type {suffix!r}; allowed: .csv, .npz, .zip (or give format)",
            status=415,
        )
    return "csv"


# ---------------------------------------------------------------------------------------------
# Targets: raw labels → (task, y, class names), shared by every format


def _numbers(keys: np.ndarray) -> np.ndarray | None:
    """The distinct raw labels as float64, or None when any is not a number."""
    if keys.dtype.kind in "biuf":
        return keys.astype(np.float64)
    try:
        return np.char.strip(keys.astype(str)).astype(np.float64)
    except ValueError:
        return None


def _class_name(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _encode_target(
    keys: np.ndarray,
    codes: np.ndarray,
    task: Task | None,
    infer: Literal["count", "integral", "dtype"],
    what: str,
) -> tuple[Task, torch.Tensor, list[str] | None]:
    """`keys` are the distinct raw labels, `codes` (N,) index them per sample. Numeric keys are
    compared by value ("1" and "1.0" are one class); `infer` decides the task when none is given:
    "count" (CSV: few distinct integers), "integral" (integers), "dtype" (an integer/text dtype)."""
    n = int(codes.shape[0])
    numeric = _numbers(keys)
    if numeric is None:
        if task == "regression":
            text = next(str(k) for k in keys if _numbers(np.asarray([k])) is None)
            raise UploadError(
                f"task 'regression' needs a numeric target; {what} holds text (e.g. {text!r})",
                field="task",
            )
        uniq, inverse = np.unique(np.char.strip(keys.astype(str)), return_inverse=True)
        names = [str(u) for u in uniq]
        return "classification", torch.from_numpy(inverse[codes].astype(np.int64)), names
    finite = np.isfinite(numeric)
    if not finite.all():
        row = int(np.argmax(~finite[codes]))
        raise UploadError(
            f"{what} has a missing or non-finite value ({str(keys[codes[row]])!r}) in row {row + 1}"
        )
    integral = bool(np.all(numeric == np.round(numeric)))
    if task is None:
        if infer == "dtype":
            classes = keys.dtype.kind in "biuUS"
        elif infer == "integral":
            classes = integral
        else:
            distinct = len(np.unique(numeric))
            classes = integral and distinct <= MAX_INFERRED_CLASSES and distinct < n / 2
        task = "classification" if classes else "regression"
    if task == "regression":
        return (
            "regression",
            torch.from_numpy(numeric[codes].astype(np.float32).reshape(-1, 1)),
            None,
        )
    uniq, inverse = np.unique(numeric, return_inverse=True)
    y = torch.from_numpy(inverse[codes].astype(np.int64))
    return "classification", y, [_class_name(v) for v in uniq]


def _check_classes(y: torch.Tensor, names: list[str], what: str, field: str) -> dict[str, int]:
    """Per-class counts; at least two classes, each with `MIN_CLASS_SAMPLES` samples."""
    counts = torch.bincount(y, minlength=len(names)).tolist()
    if len(names) < 2:
        raise UploadError(
            f"{what} has one class ({names[0]!r}); classification needs at least two",
            field=field,
            hint="give task=regression if the target is a quantity" if field == "target" else None,
        )
    small = [(name, c) for name, c in zip(names, counts, strict=True) if c < MIN_CLASS_SAMPLES]
    if small:
        listed = _names([f"{name!r} ({c})" for name, c in small], 10)
        numeric = _numbers(np.asarray(names)) is not None
        raise UploadError(
            f"every class needs at least {MIN_CLASS_SAMPLES} samples for a stratified split;"
            f" {what} has classes with fewer: {listed}",
            field=field,
            hint="add samples of those classes or remove them"
            + ("; if the target is a quantity, give task=regression" if numeric else ""),
        )
    return dict(zip(names, counts, strict=True))


def _check_samples(n: int, limits: UploadLimits, what: str) -> None:
    if n == 0:
        raise UploadError(f"{what} holds no samples")
    if n > limits.max_samples:
        raise UploadError(
            f"{what} holds {n:,} samples; the limit is {limits.max_samples:,}", status=413
        )


class _Codes:
    """Interns labels as they stream by: label → code in order of first appearance."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def __call__(self, value: str) -> int:
        s = value.strip()
        code = self.index.get(s)
        if code is None:
            code = self.index[s] = len(self.index)
        return code

    def keys(self) -> np.ndarray:
        return np.asarray(list(self.index), dtype=str) if self.index else np.asarray([], dtype=str)

    def first_row(self, codes: np.ndarray, value: str) -> int | None:
        """1-based row of the first sample labelled `value`, or None."""
        code = self.index.get(value)
        return None if code is None else int(np.argmax(codes == code)) + 1


# ---------------------------------------------------------------------------------------------
# CSV


def _text_lines(fh: IO[str]) -> Iterator[str]:
    """Lines, with UnicodeDecodeError turned into an UploadError that says where."""
    try:
        yield from fh
    except UnicodeDecodeError as exc:
        raise UploadError(
            f"the CSV is not UTF-8 text (byte {exc.object[exc.start : exc.start + 1]!r});"
            " save it as UTF-8"
        ) from None


def _delimiter(first_line: str) -> str:
    """The candidate that splits the header into the most fields (',' on a tie)."""
    counts = [len(next(csv.reader([first_line], delimiter=d), [])) for d in DELIMITERS]
    return DELIMITERS[counts.index(max(counts))]


def _header(lines: Iterator[str], what: str) -> tuple[str, list[str], int]:
    """(delimiter, column names, lines up to and with the header) from the first non-blank line;
    blank names become column_<i>."""
    for count, line in enumerate(lines, start=1):
        if line.strip():
            delimiter = _delimiter(line)
            cells = next(csv.reader([line], delimiter=delimiter))
            return delimiter, [c.strip() or f"column_{i + 1}" for i, c in enumerate(cells)], count
    raise UploadError(f"{what} is empty (no header row)")


def _column(names: list[str], wanted: str, what: str) -> int | None:
    """The index of column `wanted` (exact, else a unique case-insensitive match); a name given twice
    is ambiguous."""
    if names.count(wanted) > 1:
        raise UploadError(
            f"column {wanted!r} appears {names.count(wanted)} times in {what}; rename all but one",
            field="target",
        )
    if wanted in names:
        return names.index(wanted)
    folded = [i for i, n in enumerate(names) if n.casefold() == wanted.casefold()]
    return folded[0] if len(folded) == 1 else None


def _target_index(names: list[str], target: str | None, what: str) -> int:
    if target is not None:
        t = _column(names, target, what)
        if t is None:
            raise UploadError(
                f"column {target!r} not found; columns: {_names(names)}", field="target"
            )
        return t
    for default in ("target", "label"):
        t = _column(names, default, what)
        if t is not None:
            return t
    raise UploadError(
        f"no target given and no column named 'target' or 'label'; columns: {_names(names)}",
        field="target",
        hint="give target: the name of the label column",
    )


def _read_csv(path: Path, options: UploadOptions, limits: UploadLimits) -> ParsedUpload:
    """The header with the csv module, then the whole table in numpy's C parser (float32, the target
    column interned to codes by a converter): a few passes over the file, never a list of lines."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        lines = _text_lines(fh)
        delimiter, names, skip = _header(lines, "the CSV")
        if not any(line.strip() for line in lines):
            raise UploadError("the CSV has a header row but no data rows")
    t = _target_index(names, options.target, "the CSV")
    features = [n for i, n in enumerate(names) if i != t]
    if not features:
        raise UploadError(
            f"the CSV has only the target column {names[t]!r}; it needs feature columns too"
        )
    labels = _Codes()
    try:
        with path.open(encoding="utf-8-sig") as fh:
            table = np.loadtxt(
                fh,
                delimiter=delimiter,
                quotechar='"',
                skiprows=skip,
                comments=None,
                dtype=np.float32,
                ndmin=2,
                converters={t: labels},
            )
    except ValueError as exc:  # UnicodeDecodeError too: the diagnosis says where
        raise _diagnose_csv(path, delimiter, names, t, exc) from None
    if table.shape[1] != len(names):
        raise _diagnose_csv(path, delimiter, names, t, ValueError("column count"))
    _check_samples(table.shape[0], limits, "the CSV")
    if len(labels.index) > _EXACT_CODES:
        raise UploadError(
            f"the target column {names[t]!r} has over {_EXACT_CODES:,} distinct values"
        )
    codes = table[:, t].astype(np.int64)
    X = np.ascontiguousarray(np.delete(table, t, axis=1))
    del table
    finite = np.isfinite(X)
    if not finite.all():
        r, c = divmod(int(np.argmin(finite.reshape(-1))), X.shape[1])
        raise UploadError(
            f"column {features[c]!r} has a missing or non-finite value ({X[r, c]}) in row {r + 1};"
            " fill or drop it"
        )
    target = names[t]
    empty = labels.first_row(codes, "")
    if empty is not None:
        raise UploadError(f"empty value in the target column {target!r}, row {empty}")
    task, y, class_names = _encode_target(
        labels.keys(), codes, options.task, "count", f"target column {target!r}"
    )
    counts = (
        _check_classes(y, class_names, f"target column {target!r}", "target")
        if class_names is not None
        else None
    )
    return ParsedUpload(
        format="csv",
        arrays=Arrays(torch.from_numpy(X), y),
        task=task,
        input_shape=(len(features),),
        kind="tabular",
        class_names=class_names,
        class_counts=counts,
        feature_names=features,
        options=UploadOptions(format="csv", target=target, task=task),
    )


def _diagnose_csv(
    path: Path, delimiter: str, names: list[str], t: int, exc: ValueError
) -> UploadError:
    """The fast parser failed: read the file again with the csv module to say exactly where — a row
    of the wrong length, then non-numeric feature columns (all of them), then empty cells."""
    bad: dict[int, tuple[str, int]] = {}
    empty: dict[int, int] = {}
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(_text_lines(fh), delimiter=delimiter)
        next((cells for cells in reader if cells), None)  # the header
        row = 0
        for cells in reader:
            if not cells:  # an empty line, which numpy skips too
                continue
            row += 1
            if len(cells) != len(names):
                values = f"{len(cells)} value" + ("" if len(cells) == 1 else "s")
                return UploadError(
                    f"row {row} (line {reader.line_num}) has {values}; the header has"
                    f" {len(names)} columns"
                )
            for i, cell in enumerate(cells):
                if i == t or i in bad:
                    continue
                value = cell.strip()
                if not value:
                    empty.setdefault(i, row)
                    continue
                try:
                    float(value)
                except ValueError:
                    bad[i] = (cell, row)
    if bad:
        first = min(bad.values(), key=lambda vr: vr[1])
        return UploadError(
            f"non-numeric feature columns: {_names([names[i] for i in sorted(bad)])} (first bad"
            f" value {first[0]!r} in row {first[1]})",
            hint="features must be numbers: encode text columns (e.g. one-hot) or drop them; if one"
            " of them is the label, give it as target",
        )
    if empty:
        where = ", ".join(f"{names[i]!r} (row {r})" for i, r in sorted(empty.items())[:10])
        return UploadError(
            f"empty values in feature columns: {where}", hint="fill or drop the missing values"
        )
    return UploadError(f"the CSV cannot be read: {exc}")


# ---------------------------------------------------------------------------------------------
# NPZ


@dataclass(frozen=True)
class _NpyHeader:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> _NpyHeader:
    """Shape and dtype from the .npy header, before any data is read: object arrays (pickles) and
    headers that promise more data than the entry holds are refused here."""
    fmt = np.lib.format
    try:
        with zf.open(info) as fp:
            version = fmt.read_magic(fp)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _fortran, dtype = read(fp)
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
    return _NpyHeader(name, tuple(int(s) for s in shape), dtype)


def _npy_read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> np.ndarray:
    try:
        with zf.open(info) as fp:
            return np.lib.format.read_array(fp, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UploadError(f"array {name!r} cannot be read: {exc}") from None


def _read_npz(path: Path, options: UploadOptions, limits: UploadLimits) -> ParsedUpload:
    """`np.load(path, allow_pickle=False)`, done by hand on the checked archive so that each array's
    header (shape, dtype) is judged before its data is read."""
    with open_archive(path, limits, "NPZ archive") as zf:
        arrays = {i.filename[:-4]: i for i in files(zf) if i.filename.endswith(".npy")}
        missing = [k for k in ("X", "y") if k not in arrays]
        if missing:
            raise UploadError(
                f"the NPZ has no array {' or '.join(repr(m) for m in missing)}; arrays present:"
                f" {_names(sorted(arrays)) or 'none'}",
                hint="save features and labels as np.savez(path, X=features, y=labels)",
            )
        hx = _npy_header(zf, arrays["X"], "X")
        hy = _npy_header(zf, arrays["y"], "y")
        _check_npz_shapes(hx, hy, limits)
        X_raw = _npy_read(zf, arrays["X"], "X")
        y_raw = _npy_read(zf, arrays["y"], "y")
    X = torch.from_numpy(np.asarray(X_raw, dtype=np.float32))
    del X_raw
    finite = torch.isfinite(X).reshape(X.shape[0], -1).all(dim=1)
    if not bool(finite.all()):
        raise UploadError(
            f"array 'X' has a NaN or infinite value in sample {int((~finite).nonzero()[0, 0])}"
        )
    kind: Literal["tabular", "image"] = "tabular" if X.dim() == 2 else "image"
    if X.dim() == 3:
        X = X.unsqueeze(1)
    if options.size is not None:
        if kind != "image":
            raise UploadError(
                f"size applies to images; this NPZ's X is {X.shape[0]}×{X.shape[1]} features",
                field="size",
            )
        X = resize(X, options.size)
    task, y, class_names = _npz_target(y_raw, options.task)
    counts = _check_classes(y, class_names, "array 'y'", "file") if class_names else None
    return ParsedUpload(
        format="npz",
        arrays=Arrays(X, y),
        task=task,
        input_shape=tuple(int(s) for s in X.shape[1:]),
        kind=kind,
        class_names=class_names,
        class_counts=counts,
        feature_names=None,
        options=UploadOptions(format="npz", task=task, size=options.size),
    )


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
    _check_samples(hx.shape[0], limits, "the NPZ")
    need = int(np.prod(hx.shape, dtype=np.int64)) * 4
    if need > limits.max_array_bytes:
        raise UploadError(
            f"array 'X' {hx.shape} takes {nbytes(need)} as float32; the limit is"
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
    return _encode_target(keys, codes.reshape(-1), task, "dtype", "array 'y'")


# ---------------------------------------------------------------------------------------------
# ZIP of class folders


def _common_root(paths: list[tuple[str, ...]]) -> int:
    """How many leading folders every image shares above its class folder (data/cats/1.png → 1)."""
    depth = 0
    while paths and all(len(p) > depth + 2 for p in paths) and len({p[depth] for p in paths}) == 1:
        depth += 1
    return depth


def _read_image_folder(path: Path, options: UploadOptions, limits: UploadLimits) -> ParsedUpload:
    """cats/1.png, dogs/x.jpg (under shared root folders, if any): the class is the first folder
    below the root. Files beside the class folders are ignored; a non-image inside one is refused."""
    if options.task == "regression":
        raise UploadError(
            "class folders give class labels; for regression upload an annotations CSV with numeric"
            " labels, or an NPZ",
            field="task",
        )
    with open_archive(path, limits) as zf:
        entries = files(zf)
        images = [(parts(i.filename), i) for i in entries if is_image_name(i.filename)]
        if not images:
            others = _names([i.filename for i in entries], 5) or "nothing"
            raise UploadError(
                f"the archive holds no PNG or JPEG images (found: {others})",
                hint="put each class's images in a folder named after the class: cats/1.png",
            )
        root = _common_root([p for p, _ in images])
        prefix = images[0][0][:root]
        samples: list[tuple[str, str, zipfile.ZipInfo]] = []
        for p, info in images:
            rel = p[root:]
            if len(rel) < 2:
                raise UploadError(
                    f"image {info.filename!r} is not inside a class folder; put each class's images"
                    " in a folder named after the class (cats/1.png)"
                )
            samples.append((rel[0], info.filename, info))
        classes = sorted({c for c, _, _ in samples})
        for info in entries:
            p = parts(info.filename)
            inside = len(p) > root + 1 and p[:root] == prefix and p[root] in classes
            if inside and not is_image_name(info.filename):
                raise UploadError(
                    f"entry {info.filename!r} in class folder {p[root]!r} is not a PNG or JPEG image"
                    " (by its name); allowed: .png, .jpg, .jpeg",
                    hint="convert it to PNG/JPEG or remove it from the archive",
                )
        _check_samples(len(samples), limits, "the archive")
        samples.sort(key=lambda s: (s[0], s[1]))
        index = {c: k for k, c in enumerate(classes)}
        y = torch.tensor([index[c] for c, _, _ in samples], dtype=torch.int64)
        counts = _check_classes(y, classes, "the archive", "file")
        X = read_images(zf, [info for _, _, info in samples], options.size, limits)
    resolved = UploadOptions("image_folder", task="classification", size=options.size)
    return _image_upload("image_folder", X, y, classes, counts, resolved)


def _image_upload(
    fmt: str,
    X: np.ndarray,
    y: torch.Tensor,
    class_names: list[str] | None,
    counts: dict[str, int] | None,
    options: UploadOptions,
) -> ParsedUpload:
    return ParsedUpload(
        format=fmt,
        arrays=Arrays(torch.from_numpy(X), y),
        task=options.task or "classification",
        input_shape=tuple(int(s) for s in X.shape[1:]),
        kind="image",
        class_names=class_names,
        class_counts=counts,
        feature_names=None,
        options=options,
    )


# ---------------------------------------------------------------------------------------------
# ZIP with an annotations CSV (rows of file_name,label; image = img_dir/file_name)


def _normalise(name: str) -> str:
    return posixpath.normpath(name.strip().replace("\\", "/")).lstrip("/")


def _read_annotations(path: Path, options: UploadOptions, limits: UploadLimits) -> ParsedUpload:
    """One CSV in the archive; each row names an image (relative to the CSV's folder, or an images/,
    img/ or imgs/ folder beside it) and its label. The first row is a header unless its first cell
    names an image in the archive. Images the CSV does not name are ignored."""
    with open_archive(path, limits) as zf:
        entries = files(zf)
        csvs = [i for i in entries if i.filename.lower().endswith(".csv")]
        if len(csvs) != 1:
            found = _names([i.filename for i in csvs], 5)
            raise UploadError(
                "the archive holds no annotations CSV (file name, label)"
                if not csvs
                else f"the archive holds {len(csvs)} CSV files ({found}); keep only the annotations"
                " file",
            )
        table = csvs[0].filename
        by_name = {_normalise(i.filename): i for i in entries if i is not csvs[0]}
        base = posixpath.dirname(table)
        dirs = [posixpath.join(base, d) if d else base for d in IMAGE_DIRS]

        def resolve(cell: str) -> zipfile.ZipInfo | None:
            for d in dirs:
                info = by_name.get(_normalise(posixpath.join(d, cell.strip())))
                if info is not None:
                    return info
            return None

        with zf.open(csvs[0]) as raw:
            lines = _text_lines(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
            first = next((line for line in lines if line.strip()), None)
            if first is None:
                raise UploadError(f"the annotations CSV {table!r} is empty")
            delimiter = _delimiter(first)
            reader = csv.reader(itertools.chain([first], lines), delimiter=delimiter)
            head = next(reader)
            header = None if head and resolve(head[0]) is not None else head
            label_col = _label_column(header, options.target, table)
            rows = reader if header is not None else itertools.chain([head], reader)
            infos, label_codes, labels = [], [], _Codes()
            for r, cells in enumerate((c for c in rows if any(x.strip() for x in c)), start=1):
                if len(cells) <= label_col:
                    raise UploadError(
                        f"row {r} of {table!r} has {len(cells)} value(s); it needs a file name and"
                        " a label"
                    )
                info = resolve(cells[0])
                if info is None:
                    looked = ", ".join(repr(d + "/" if d else "(the archive root)") for d in dirs)
                    raise UploadError(
                        f"row {r} of {table!r} names {cells[0].strip()!r}, which is not in the"
                        f" archive (looked in {looked})"
                    )
                if not cells[label_col].strip():
                    raise UploadError(f"row {r} of {table!r} has an empty label")
                infos.append(info)
                label_codes.append(labels(cells[label_col]))
                if len(infos) > limits.max_samples:
                    _check_samples(len(infos), limits, f"the annotations CSV {table!r}")
        _check_samples(len(infos), limits, f"the annotations CSV {table!r}")
        column = header[label_col].strip() if header is not None else str(label_col)
        what = f"label column {column!r} of {table!r}"
        task, y, class_names = _encode_target(
            labels.keys(), np.asarray(label_codes, dtype=np.int64), options.task, "integral", what
        )
        counts = _check_classes(y, class_names, what, "target") if class_names else None
        X = read_images(zf, infos, options.size, limits)
    resolved = UploadOptions("image_annotations", target=column, task=task, size=options.size)
    return _image_upload("image_annotations", X, y, class_names, counts, resolved)


def _label_column(header: list[str] | None, target: str | None, table: str) -> int:
    """The label column: `target` by name (by 0-based position when the CSV has no header), else
    the second column, as a custom Dataset's `iloc[idx, 1]` reads it."""
    if target is None:
        return 1
    if header is None:
        if target.strip().isdigit() and int(target) >= 1:
            return int(target)
        raise UploadError(
            f"the annotations CSV {table!r} has no header row, so target must be the label"
            f" column's position (1 for the second column, counting from 0); got {target!r}",
            field="target",
        )
    names = [c.strip() for c in header]
    t = _column(names, target, f"the annotations CSV {table!r}")
    if t is None:
        raise UploadError(f"column {target!r} not found; columns: {_names(names)}", field="target")
    if t == 0:
        raise UploadError(
            f"column {target!r} is the file name column; the label must be another column",
            field="target",
        )
    return t

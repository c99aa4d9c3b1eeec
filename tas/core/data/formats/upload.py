"""The entry points of uploads: `read_upload` (upload time: the API calls it once and stores the
schema it returns) and `load_upload` (job time: it re-reads the stored original with the schema's
*resolved* options, format, target, task and size as they were decided, and refuses a result that
no longer matches). What each format reads is in its own module; `registry.FORMATS` lists them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tas.core.data.archive import UploadError, UploadLimits, num
from tas.core.data.dataset import Arrays, DatasetInfo, Kind, Loaded, Task
from tas.core.data.formats.registry import FORMATS, detect
from tas.core.errors import DataError

__all__ = [
    "ParsedUpload",
    "UploadError",
    "UploadLimits",
    "UploadOptions",
    "info_from_schema",
    "load_upload",
    "read_upload",
]

TASKS: tuple[str, ...] = ("classification", "regression")
_OPTION_KEYS = ("format", "target", "task", "size")
#: The largest side `size` may resize an image to (pixels).
MAX_SIDE = 4096


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

    #: A name in `registry.FORMATS`, checked here.
    format: str | None = None
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
    #: X (N, *input_shape), compact: uint8 pixels for image archives and uint8 image NPZs (read
    #: as pixel / 255 per batch), float32 otherwise; y int64 (N,) for classes, float32 (N, d) for
    #: regression.
    arrays: Arrays
    task: Task
    input_shape: tuple[int, ...]
    kind: Kind
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
    fmt = detect(path, filename, options.format, limits)
    if options.size is not None and options.size[0] * options.size[1] > limits.max_pixels:
        raise UploadError(
            f"size {options.size[0]}×{options.size[1]} is {num(options.size[0] * options.size[1])}"
            f" pixels; the limit is {num(limits.max_pixels)}",
            field="size",
            status=413,
        )
    for option, refusal in fmt.refuses.items():
        if getattr(options, option) is not None:
            raise UploadError(refusal, field=option)
    got = fmt.read(path, options, limits)
    return ParsedUpload(
        format=fmt.name,
        arrays=got.arrays,
        task=got.task,
        input_shape=got.input_shape,
        kind=got.kind,
        class_names=got.class_names,
        class_counts=got.class_counts,
        feature_names=got.feature_names,
        options=UploadOptions(fmt.name, target=got.target, task=got.task, size=options.size),
    )


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
                f"the stored file no longer matches its schema: {key} was"
                f" {_short(schema.get(key))}, reading it now gives {_short(now.get(key))}",
                hint="upload the data again to get a dataset id for what the file holds now",
            )
    return Loaded(
        parsed.arrays,
        notes={"source": "upload", "format": parsed.format, "filename": filename},
    )


def _short(v: object, limit: int = 120) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[: limit - 1] + "…"

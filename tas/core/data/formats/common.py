"""What every reader shares: raw labels → (task, y, class names), the sample and class checks, and
lists in messages.

How the task is decided when the upload does not say (`task` overrides each of these):
- CSV target column: a text target gives classes (sorted names); a numeric one gives classes when it
  holds integers with at most `MAX_INFERRED_CLASSES` distinct values, fewer than half the rows, else
  regression.
- Annotations CSV label column: integers or text give classes; non-integral numbers regression.
- NPZ `y`: integer, bool or string dtype gives classes, float regression.
Numeric class labels keep their sorted values as class names ("1" and "1.0" are one class)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from tas.core.data.archive import UploadError, UploadLimits
from tas.core.data.dataset import Task

#: A numeric CSV target is class labels when it holds integers with at most this many distinct
#: values (and fewer than half the rows); otherwise it is a quantity to regress.
MAX_INFERRED_CLASSES = 50
#: A stratified split needs two samples of every class (one to train on, one to hold out).
MIN_CLASS_SAMPLES = 2


def listing(items: list[str], limit: int = 20) -> str:
    """A list for a message: the first `limit`, then how many in all."""
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, … ({len(items)} in all)"


def numbers(keys: np.ndarray) -> np.ndarray | None:
    """The distinct raw labels as float64, or None when any is not a number."""
    if keys.dtype.kind in "biuf":
        return keys.astype(np.float64)
    try:
        return np.char.strip(keys.astype(str)).astype(np.float64)
    except ValueError:
        return None


def _class_name(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def encode_target(
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
    numeric = numbers(keys)
    if numeric is None:
        if task == "regression":
            text = next(str(k) for k in keys if numbers(np.asarray([k])) is None)
            raise UploadError(
                f"task 'regression' needs a numeric target; {what} holds text (e.g. {text!r})",
                field="task",
            )
        uniq, inverse = np.unique(np.char.strip(keys.astype(str)), return_inverse=True)
        labels = [str(u) for u in uniq]
        y = inverse[codes].astype(np.int64, copy=False)
        return "classification", torch.from_numpy(y), labels
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
    y = torch.from_numpy(inverse[codes].astype(np.int64, copy=False))
    return "classification", y, [_class_name(v) for v in uniq]


def check_classes(y: torch.Tensor, labels: list[str], what: str, field: str) -> dict[str, int]:
    """Per-class counts; at least two classes, each with `MIN_CLASS_SAMPLES` samples."""
    counts = torch.bincount(y, minlength=len(labels)).tolist()
    if len(labels) < 2:
        raise UploadError(
            f"{what} has one class ({labels[0]!r}); classification needs at least two",
            field=field,
            hint="give task=regression if the target is a quantity" if field == "target" else None,
        )
    small = [(name, c) for name, c in zip(labels, counts, strict=True) if c < MIN_CLASS_SAMPLES]
    if small:
        listed = listing([f"{name!r} ({c})" for name, c in small], 10)
        numeric = numbers(np.asarray(labels)) is not None
        raise UploadError(
            f"every class needs at least {MIN_CLASS_SAMPLES} samples for a stratified split;"
            f" {what} has classes with fewer: {listed}",
            field=field,
            hint="add samples of those classes or remove them"
            + ("; if the target is a quantity, give task=regression" if numeric else ""),
        )
    return dict(zip(labels, counts, strict=True))


def check_samples(n: int, limits: UploadLimits, what: str) -> None:
    if n == 0:
        raise UploadError(f"{what} holds no samples")
    if n > limits.max_samples:
        raise UploadError(
            f"{what} holds {n:,} samples; the limit is {limits.max_samples:,}", status=413
        )


class Codes:
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

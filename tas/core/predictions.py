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
- regression: `value` and `predicted` float64 (N, d), in the data's units."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

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
    """A split's arrays (FileNotFoundError when it was not written)."""
    with np.load(Path(path), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _scalar_or_list(row: np.ndarray) -> float | list[float]:
    return float(row[0]) if row.shape[0] == 1 else [float(v) for v in row]


def rows(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One JSON-able dict per sample. Classification: index, label, class_name, predicted,
    predicted_class_name, probability, correct. Regression: index, value, predicted, error
    (predicted - value); scalars for one target column, lists for several."""
    index = arrays["index"].tolist()
    if "value" in arrays:
        value, predicted = arrays["value"], arrays["predicted"]
        return [
            {
                "index": i,
                "value": _scalar_or_list(value[k]),
                "predicted": _scalar_or_list(predicted[k]),
                "error": _scalar_or_list(predicted[k] - value[k]),
            }
            for k, i in enumerate(index)
        ]
    names = arrays["class_names"].tolist() if "class_names" in arrays else None

    def name(c: int) -> str | None:
        return names[c] if names is not None and 0 <= c < len(names) else None

    label, predicted = arrays["label"].tolist(), arrays["predicted"].tolist()
    probability = arrays["probability"].tolist()
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
        for i, t, p, prob in zip(index, label, predicted, probability, strict=True)
    ]


def to_csv(arrays: dict[str, np.ndarray]) -> str:
    """The same rows as CSV with a header; several target columns become value_0…, predicted_0…"""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if "value" in arrays:
        d = arrays["value"].shape[1]
        cols = ["value", "predicted", "error"]
        header = cols if d == 1 else [f"{c}_{j}" for c in cols for j in range(d)]
        writer.writerow(["index", *header])
        value, predicted = arrays["value"], arrays["predicted"]
        for k, i in enumerate(arrays["index"].tolist()):
            error = predicted[k] - value[k]
            writer.writerow(
                [i, *map(repr, [*value[k].tolist(), *predicted[k].tolist(), *error.tolist()])]
            )
        return out.getvalue()
    writer.writerow(
        [
            "index",
            "label",
            "class_name",
            "predicted",
            "predicted_class_name",
            "probability",
            "correct",
        ]
    )
    for r in rows(arrays):
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

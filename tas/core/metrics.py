"""The evaluate stage's metrics, and their flat part as every epoch's validation row
(`summary_metrics`), computed from whole-tensor predictions.

One batched forward pass under `inference_mode` gives every output (`predict`); the metrics are then
a few tensor ops over all of them: a `bincount` of `true * K + predicted` is the confusion matrix,
and precision, recall and F1 of every class follow from its diagonal and its sums. No per-sample
Python.

Conventions (the same as scikit-learn's `zero_division=0`): a class that is never predicted has
precision 0, a class with no true samples has recall 0, and F1 is 0 where precision + recall is 0 —
never NaN. Macro averages are the unweighted mean over all K classes of the dataset (absent classes
included, as `precision_recall_fscore_support(labels=range(K), average="macro")`); weighted
averages weight each class by its support. R² of a target whose values are all equal is undefined
and reported as NaN (null in JSON), like the epoch rows' `val_r2`.

The flat keys the rest of the service reads stay as they were (`loss`, `accuracy` for classes;
`loss`, `mae`, `rmse`, `r2` for values, over all target elements, `r2` pooled over the columns as in
the epoch rows); the detail sits beside them."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

Target = Literal["index", "binary", "value"]
AutocastFactory = Callable[[], contextlib.AbstractContextManager[Any]]

#: Above this many classes the confusion matrix (K² numbers in the job's JSON) is left out.
MAX_CONFUSION_CLASSES = 256

#: The flat metrics of a split, by target form: what an epoch row carries (as `val_<key>`) and
#: what the rest of the service reads from the evaluate stage.
SUMMARY_KEYS: dict[str, tuple[str, ...]] = {
    "index": ("loss", "accuracy"),
    "binary": ("loss", "accuracy"),
    "value": ("loss", "mae", "rmse", "r2"),
}


def predict(
    model: nn.Module,
    X: torch.Tensor,
    batch_size: int = 1024,
    autocast: AutocastFactory = contextlib.nullcontext,
    *,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Every output of the model for X as one float32 tensor (N, out), on `device` (default X's);
    eval mode. X may be compact and elsewhere (uint8 images in host memory or a memory map): each
    batch is moved to `device` and made the model's input by `transform` (decode, normalise)."""
    model.eval()
    device = X.device if device is None else device
    parts: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, int(X.shape[0]), batch_size):
            xb = X[start : start + batch_size].to(device)
            if transform is not None:
                xb = transform(xb)
            with autocast():
                out = model(xb)
            parts.append(out.float())
    if not parts:
        return torch.empty((0, 0), device=device)
    return torch.cat(parts)


def class_names_for(num_classes: int, names: Sequence[str] | None) -> list[str]:
    """Keys for the per-class metrics: the dataset's class names, or the class indices; made unique."""
    if names is None or len(names) != num_classes:
        return [str(i) for i in range(num_classes)]
    out = [str(n) for n in names]
    if len(set(out)) != len(out):
        return [f"{i}:{n}" for i, n in enumerate(out)]
    return out


def confusion_matrix(true: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts, rows = true class, columns = predicted class, by one bincount."""
    k = num_classes
    flat = true.long().reshape(-1) * k + pred.long().reshape(-1)
    return torch.bincount(flat, minlength=k * k).reshape(k, k)


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num))


def classification_metrics(
    true: torch.Tensor,
    pred: torch.Tensor,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, macro and weighted averages, and the
    confusion matrix, from class indices `true` and `pred` (N,)."""
    cm = confusion_matrix(true, pred, num_classes).cpu()
    c = cm.double()
    tp = c.diagonal()
    support = c.sum(dim=1)  # true samples per class
    predicted = c.sum(dim=0)  # predictions per class
    n = float(c.sum())
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * tp, support + predicted)  # = 2PR/(P+R), 0 where both are 0
    names = class_names_for(num_classes, class_names)
    rows = torch.stack([precision, recall, f1, support], dim=1).tolist()
    per_class = {
        name: {"precision": p, "recall": r, "f1": f, "support": int(s)}
        for name, (p, r, f, s) in zip(names, rows, strict=True)
    }
    weights = support / n if n > 0 else torch.zeros_like(support)

    def avg(w: torch.Tensor | None) -> dict[str, float]:
        vals = torch.stack([precision, recall, f1])
        m = vals.mean(dim=1) if w is None else (vals * w).sum(dim=1)
        p, r, f = m.tolist()
        return {"precision": p, "recall": r, "f1": f}

    out: dict[str, Any] = {
        "accuracy": float(tp.sum()) / n if n > 0 else float("nan"),
        "per_class": per_class,
        "macro": avg(None),
        "weighted": avg(weights),
    }
    if num_classes <= MAX_CONFUSION_CLASSES:
        out["confusion_matrix"] = {"labels": names, "matrix": cm.tolist()}
    else:
        out["confusion_matrix"] = None
    return out


def regression_metrics(pred: torch.Tensor, true: torch.Tensor) -> dict[str, Any]:
    """MAE, RMSE and R² over all target elements (R² pooled over the columns), and, for d > 1
    target columns, the same per column (`per_target`) and their unweighted mean (`mean`)."""
    p = pred.double().reshape(pred.shape[0], -1)
    t = true.double().reshape(true.shape[0], -1)
    n, d = t.shape
    diff = p - t
    abs_col = diff.abs().sum(dim=0)
    sq_col = diff.square().sum(dim=0)
    tot_col = (t - t.mean(dim=0)).square().sum(dim=0) if n else torch.zeros(d, dtype=torch.float64)
    nan = torch.full_like(tot_col, float("nan"))
    r2_col = torch.where(tot_col > 0, 1.0 - sq_col / tot_col.clamp_min(1e-300), nan)
    elems = max(1, n * d)
    abs_total, sq_total, tot_total = (
        float(v) for v in (abs_col.sum(), sq_col.sum(), tot_col.sum())
    )
    out: dict[str, Any] = {
        "mae": abs_total / elems,
        "rmse": math.sqrt(sq_total / elems),
        "r2": 1.0 - sq_total / tot_total if tot_total > 0 else float("nan"),
    }
    if d > 1:
        mae_col = abs_col / max(n, 1)
        rmse_col = (sq_col / max(n, 1)).sqrt()
        cols = torch.stack([mae_col, rmse_col, r2_col], dim=1).tolist()
        out["per_target"] = [{"mae": a, "rmse": b, "r2": c} for a, b, c in cols]
        out["mean"] = {
            "mae": float(mae_col.mean()),
            "rmse": float(rmse_col.mean()),
            "r2": float(r2_col.mean()),  # NaN if any column's R² is undefined
        }
    return out


def evaluate_model(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    loss_fn: nn.Module,
    target: Target,
    *,
    batch_size: int = 1024,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    autocast: AutocastFactory = contextlib.nullcontext,
    inverse: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The evaluate stage's metrics for a split: one forward pass, then the loss (batch-weighted
    mean, as `tas.core.loop.evaluate` computes it) and the task's metrics. `y` is in the loss's form:
    class indices (index), a float 0/1 column (binary) or float values (value, scaled when
    `inverse` maps them back to the data's units, in which the regression metrics are given)."""
    out = predict(model, X, batch_size, autocast)
    return output_metrics(
        out,
        y,
        loss_fn,
        target,
        batch_size=batch_size,
        num_classes=num_classes,
        class_names=class_names,
        inverse=inverse,
    )


def output_metrics(
    out: torch.Tensor,
    y: torch.Tensor,
    loss_fn: nn.Module,
    target: Target,
    *,
    batch_size: int = 1024,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    inverse: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """`evaluate_model` from outputs already computed (`predict`): the evaluate stage also writes
    them out per sample, from the same forward pass."""
    n = int(out.shape[0])
    with torch.inference_mode():
        loss_sum = torch.zeros((), device=out.device, dtype=torch.float64)
        for start in range(0, n, batch_size):
            part = out[start : start + batch_size]
            loss_sum += loss_fn(part, y[start : start + batch_size]).double() * part.shape[0]
        loss = float(loss_sum) / n if n else float("nan")
        if target == "value":
            if inverse is not None:
                out, y = inverse(out), inverse(y)
            return {"loss": loss, **regression_metrics(out, y)}
        if target == "binary":
            pred = (out.reshape(-1) > 0).long()
            k = 2
        else:
            pred = out.argmax(dim=1)
            k = num_classes if num_classes is not None else int(out.shape[1])
        return {"loss": loss, **classification_metrics(y.reshape(-1).long(), pred, k, class_names)}


def summary_metrics(
    out: torch.Tensor,
    y: torch.Tensor,
    loss_fn: nn.Module,
    target: Target,
    *,
    batch_size: int = 1024,
    inverse: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """The flat metrics of `output_metrics` (`SUMMARY_KEYS`), by that very computation: the
    per-epoch validation row and the evaluate stage report the same numbers for the same weights."""
    full = output_metrics(out, y, loss_fn, target, batch_size=batch_size, inverse=inverse)
    return {key: float(full[key]) for key in SUMMARY_KEYS[target]}

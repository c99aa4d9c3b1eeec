"""Predictions from a model directory, with the model's own preprocessing applied.

The caller passes raw samples (as the dataset's loader produced them, before normalisation); the
predictor checks their shape and values, normalises them with the statistics saved in the card, runs
the model under `inference_mode` and reads the outputs the way the loss defined them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tas.core.artifact import ModelCard, load_model
from tas.core.data.prepare import Normalizer, TargetScaler
from tas.core.errors import InputShapeError, InputValueError

__all__ = ["InputShapeError", "InputValueError", "Predictor"]


class Predictor:
    def __init__(
        self,
        model: torch.nn.Module,
        card: ModelCard,
        device: str | torch.device = "cpu",
        batch_size: int = 4096,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self._card = card
        self.batch_size = batch_size
        self.input_shape = tuple(card.input_shape)
        self.normalizer = Normalizer.from_dict(card.normalization) if card.normalization else None
        if self.normalizer is not None:
            self.normalizer.mean = self.normalizer.mean.to(self.device)
            self.normalizer.std = self.normalizer.std.to(self.device)
        # A regression model trained on standardised targets outputs them standardised: its
        # values go back to the data's units here, for /predict and every other reader.
        self.target_scaler = (
            TargetScaler.from_dict(card.target_scaling) if card.target_scaling else None
        )

    @classmethod
    def from_dir(cls, directory: Path | str, device: str | torch.device = "cpu") -> Predictor:
        model, card = load_model(directory, map_location=device)
        return cls(model, card, device)

    @property
    def card(self) -> ModelCard:
        return self._card

    def _expected(self) -> str:
        shape = ", ".join(str(s) for s in self.input_shape)
        also = ""
        if len(self.input_shape) == 3 and self.input_shape[0] == 1:
            also = f" or (N, {self.input_shape[1]}, {self.input_shape[2]})"
        return f"(N, {shape}){also}"

    def _as_batch(self, x: np.ndarray | torch.Tensor | Any) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            t = x.detach()
        else:
            arr = np.asarray(x)
            if arr.dtype == object or not (
                np.issubdtype(arr.dtype, np.number) or arr.dtype == bool
            ):
                raise InputValueError(
                    f"inputs must be numbers in a regular array of shape {self._expected()};"
                    f" got an array of {arr.dtype} (ragged nesting or non-numeric values)"
                )
            t = torch.from_numpy(np.ascontiguousarray(arr))
        if t.is_complex():
            raise InputValueError("inputs must be real numbers")
        shape = self.input_shape
        if t.dim() == len(shape) + 1 and tuple(t.shape[1:]) == shape:
            pass
        elif len(shape) == 3 and shape[0] == 1 and t.dim() == 3 and tuple(t.shape[1:]) == shape[1:]:
            t = t.unsqueeze(1)  # (N, H, W) single-channel images
        else:
            raise InputShapeError(
                f"expected a batch of shape {self._expected()}, received {tuple(t.shape)}"
            )
        t = t.to(self.device, torch.float32)
        if t.numel() and not bool(torch.isfinite(t).all()):
            bad = torch.nonzero(~torch.isfinite(t.flatten(1)).all(dim=1)).flatten()
            raise InputValueError(
                f"inputs contain NaN or infinite values (sample {int(bad[0])} of {t.shape[0]})"
            )
        return t

    def check_array(self, arr: np.ndarray) -> np.ndarray:
        """The serving fast path's check, in numpy alone (no torch dispatch per request): float32
        (N, *input_shape) — (N, H, W) accepted for one-channel images — with finite values, or
        InputShapeError / InputValueError saying what was expected."""
        if arr.dtype != np.float32:
            if (
                arr.dtype == object
                or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool)
                or np.issubdtype(arr.dtype, np.complexfloating)
            ):
                raise InputValueError(
                    f"inputs must be real numbers in a regular array of shape {self._expected()};"
                    f" got an array of {arr.dtype} (ragged nesting or non-numeric values)"
                )
            arr = arr.astype(np.float32)
        shape = self.input_shape
        if arr.ndim == len(shape) + 1 and arr.shape[1:] == shape:
            pass
        elif len(shape) == 3 and shape[0] == 1 and arr.ndim == 3 and arr.shape[1:] == shape[1:]:
            arr = arr[:, None]
        else:
            raise InputShapeError(
                f"expected a batch of shape {self._expected()}, received {tuple(arr.shape)}"
            )
        finite = np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise InputValueError(
                f"inputs contain NaN or infinite values (sample {bad} of {arr.shape[0]})"
            )
        return arr

    @property
    def nbytes(self) -> int:
        """Memory held by the weights and buffers (what the serving cache bounds)."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def forward(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw outputs for a checked float32 batch (see `check_array`): normalised, one forward
        per `batch_size` chunk, under `inference_mode`. The serving batcher calls this once per
        gathered batch."""
        t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
        t = t.to(self.device, torch.float32)
        with torch.inference_mode():
            if self.normalizer is not None:
                t = self.normalizer(t)
            if t.shape[0] <= self.batch_size:
                out: torch.Tensor = self.model(t)
                return out.float()
            return torch.cat(
                [
                    self.model(t[i : i + self.batch_size]).float()
                    for i in range(0, t.shape[0], self.batch_size)
                ]
            )

    def read(self, out: torch.Tensor) -> list[dict[str, Any]]:
        """One dict per row of raw outputs, the way the loss defined them (see `predict`)."""
        return self._read(out)

    def check_batch(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """The batch as float32 (N, *input_shape), or InputShapeError / InputValueError saying what
        was expected. `predict` checks again; this lets a caller reject a request before queueing it."""
        return self._as_batch(x).cpu().numpy()

    def predict(self, x: np.ndarray | torch.Tensor) -> list[dict[str, Any]]:
        """One dict per sample: {"label", "class_name", "probabilities"} for classes,
        {"value"} for regression (a float, or a list for multi-output targets)."""
        t = self._as_batch(x)
        if t.shape[0] == 0:
            return []
        return self._read(self.forward(t))

    def _read(self, out: torch.Tensor) -> list[dict[str, Any]]:
        card = self._card
        names = card.class_names
        with torch.inference_mode():
            if card.output == "identity":
                if self.target_scaler is not None:
                    out = self.target_scaler.inverse(out.reshape(out.shape[0], -1))
                values = out.cpu().tolist()
                return [{"value": v[0] if len(v) == 1 else v} for v in values]
            if card.output == "sigmoid":
                p = torch.sigmoid(out[:, 0])
                probs = torch.stack([1 - p, p], dim=1)
                labels = (out[:, 0] > 0).long()
            else:
                probs = torch.softmax(out, dim=1)
                labels = probs.argmax(dim=1)
            label_list, prob_rows = labels.tolist(), probs.cpu().tolist()
        n_names = len(names) if names else 0
        return [
            {
                "label": label,
                "class_name": names[label] if names and label < n_names else None,
                "probabilities": row,
            }
            for label, row in zip(label_list, prob_rows, strict=True)
        ]

"""Turning a client's JSON batch into an array the model takes, with errors that say what to send."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.predictor import InputShapeError, InputValueError, Predictor
from tas.errors import InvalidInput


def to_batch(inputs: list[Any], predictor: Predictor) -> np.ndarray:
    expected = list(predictor.card.input_shape)
    try:
        arr = np.asarray(inputs, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            [
                (
                    ("body", "inputs"),
                    f"inputs must be a batch of numeric samples, each"
                    f" of shape {expected} (ragged or non-numeric values: {exc})",
                )
            ]
        ) from exc
    try:
        return predictor.check_batch(arr)
    except (InputShapeError, InputValueError) as exc:
        raise InvalidInput([(("body", "inputs"), str(exc))]) from exc

"""Loss registry: each entry knows which targets it fits and how many outputs the model needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class Loss:
    build: Callable[[], nn.Module]
    tasks: frozenset[str]
    #: "index": int64 class indices; "binary": float 0/1 column; "value": float regression targets.
    target: Literal["index", "binary", "value"]
    max_classes: int | None = None
    #: How predictions are read: softmax over classes, sigmoid of one logit, or the raw value.
    output: Literal["softmax", "sigmoid", "identity"] = "identity"
    aliases: tuple[str, ...] = field(default=())

    def out_dim(self, num_classes: int | None, target_dim: int = 1) -> int:
        if self.target == "index":
            assert num_classes is not None
            return num_classes
        if self.target == "binary":
            return 1
        return target_dim


_CLS = frozenset({"classification"})
_REG = frozenset({"regression"})

LOSSES: dict[str, Loss] = {
    "cross_entropy": Loss(nn.CrossEntropyLoss, _CLS, "index", output="softmax"),
    "bce": Loss(nn.BCEWithLogitsLoss, _CLS, "binary", max_classes=2, output="sigmoid"),
    "mse": Loss(nn.MSELoss, _REG, "value"),
    "mae": Loss(nn.L1Loss, _REG, "value"),
    "huber": Loss(nn.HuberLoss, _REG, "value"),
}

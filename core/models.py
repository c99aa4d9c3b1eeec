"""Architecture registry. Each builder gets the model spec, the sample shape and the output width."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}


def _mlp(spec: Any, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in spec.hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[spec.activation]()]
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def _linear(spec: Any, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), out_dim))


def _cnn(spec: Any, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    """Conv blocks (conv-act-pool) while the image is big enough to halve, then a linear head."""
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for ch in spec.channels:
        layers += [nn.Conv2d(c, ch, kernel_size=3, padding=1), ACTIVATIONS[spec.activation]()]
        if min(h, w) >= 4:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = ch
    layers += [nn.Flatten()]
    if spec.dropout > 0:
        layers.append(nn.Dropout(spec.dropout))
    layers.append(nn.Linear(c * h * w, out_dim))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class Arch:
    build: Callable[[Any, tuple[int, ...], int], nn.Module]
    #: "image" archs need a C×H×W sample; "any" take whatever shape and flatten it.
    needs: str = "any"
    #: Whether torchvision publishes ImageNet weights for it (`model.pretrained`).
    pretrained: bool = False


ARCHS: dict[str, Arch] = {
    "mlp": Arch(_mlp),
    "linear": Arch(_linear),
    "cnn": Arch(_cnn, needs="image"),
}


def build_model(spec: Any, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    return ARCHS[spec.arch].build(spec, tuple(input_shape), out_dim)

"""Optimizer and scheduler registries (the seeds' SGD, momentum, Adam, Adagrad, and friends)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.optim.lr_scheduler import LRScheduler

Params = Iterable[Any]
OptimizerBuilder = Callable[[Params, Any], torch.optim.Optimizer]


def _sgd(params: Params, t: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum or 0.0, weight_decay=t.weight_decay)


def _momentum(params: Params, t: Any) -> torch.optim.Optimizer:
    m = 0.9 if t.momentum is None else t.momentum
    return torch.optim.SGD(params, lr=t.lr, momentum=m, weight_decay=t.weight_decay)


def _adam(params: Params, t: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)


def _adamw(params: Params, t: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def _adagrad(params: Params, t: Any) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(params, lr=t.lr, weight_decay=t.weight_decay)


OPTIMIZERS: dict[str, OptimizerBuilder] = {
    "sgd": _sgd,
    "momentum": _momentum,
    "adam": _adam,
    "adamw": _adamw,
    "adagrad": _adagrad,
}


@dataclass(frozen=True)
class Scheduler:
    build: Callable[[torch.optim.Optimizer, Any, int], LRScheduler]
    #: Whether `step()` is called after every optimizer step or once per epoch.
    interval: Literal["step", "epoch"]


SCHEDULERS: dict[str, Scheduler] = {
    "cosine": Scheduler(
        lambda opt, t, steps: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs),
        "epoch",
    ),
    "step": Scheduler(
        lambda opt, t, steps: torch.optim.lr_scheduler.StepLR(
            opt, step_size=t.step_size, gamma=t.gamma
        ),
        "epoch",
    ),
    "onecycle": Scheduler(
        lambda opt, t, steps: torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=t.lr, total_steps=max(1, t.epochs * steps)
        ),
        "step",
    ),
}

"""Optimizer and scheduler registries (SGD, SGD with momentum, Adam, Adagrad, and friends).

A builder takes what a torch optimizer takes: an iterable of parameters, or parameter groups (dicts
with "params" and their own "lr"); `training.lr` is the default of a group that sets none.
`param_groups` splits a model into its head and its backbone (transfer learning's `backbone_lr`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch.optim.lr_scheduler import LRScheduler

#: One parameter group: {"name": "head", "params": [...], "lr": 0.01}, torch's dict form of one.
ParamGroup = dict[str, str | float | list[torch.nn.Parameter]]
#: Parameters, or parameter groups.
Params = Iterable[torch.nn.Parameter] | Iterable[ParamGroup]


class OptimizerSettings(Protocol):
    """What an optimizer builder reads: the spec's `training` section (`tas.core.spec.TrainingSpec`
    has these fields; a Protocol rather than that class, because the spec imports this registry to
    check names against it)."""

    @property
    def lr(self) -> float: ...

    @property
    def momentum(self) -> float | None: ...

    @property
    def weight_decay(self) -> float: ...


class ScheduleSettings(Protocol):
    """What a scheduler builder reads of the spec's `training` section."""

    @property
    def epochs(self) -> int: ...

    @property
    def step_size(self) -> int: ...

    @property
    def gamma(self) -> float: ...


OptimizerBuilder = Callable[[Params, OptimizerSettings], torch.optim.Optimizer]


def _sgd(params: Params, t: OptimizerSettings) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum or 0.0, weight_decay=t.weight_decay)


def _momentum(params: Params, t: OptimizerSettings) -> torch.optim.Optimizer:
    m = 0.9 if t.momentum is None else t.momentum
    return torch.optim.SGD(params, lr=t.lr, momentum=m, weight_decay=t.weight_decay)


def _adam(params: Params, t: OptimizerSettings) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)


def _adamw(params: Params, t: OptimizerSettings) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def _adagrad(params: Params, t: OptimizerSettings) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(params, lr=t.lr, weight_decay=t.weight_decay)


def param_groups(model: torch.nn.Module, head: str, lr: float, backbone_lr: float | None) -> Params:
    """The model's parameters for an optimizer. With a `backbone_lr`: two groups, "head" (the
    parameters under the module `head`) at `lr` and "backbone" (all the others) at `backbone_lr`,
    empty groups left out. Without one: all parameters in one group, in `model.parameters()` order
    (an optimizer state_dict of a plain job keeps the same layout as before groups existed).

    Frozen parameters stay in their group: with `requires_grad` False they get no gradient and the
    optimizer skips them, so unfreezing needs no new optimizer and the state_dict stays resumable."""
    if backbone_lr is None:
        return list(model.parameters())
    prefix = head + "."
    named = list(model.named_parameters())
    groups: list[ParamGroup] = [
        {"name": "head", "params": [p for n, p in named if n.startswith(prefix)], "lr": lr},
        {
            "name": "backbone",
            "params": [p for n, p in named if not n.startswith(prefix)],
            "lr": backbone_lr,
        },
    ]
    return [g for g in groups if g["params"]]


OPTIMIZERS: dict[str, OptimizerBuilder] = {
    "sgd": _sgd,
    "momentum": _momentum,
    "adam": _adam,
    "adamw": _adamw,
    "adagrad": _adagrad,
}


@dataclass(frozen=True)
class Scheduler:
    #: (the optimizer, the training settings, optimizer steps per epoch) → the scheduler.
    build: Callable[[torch.optim.Optimizer, ScheduleSettings, int], LRScheduler]
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
    # Each group peaks at its own lr (a head and a slower backbone keep their ratio).
    "onecycle": Scheduler(
        lambda opt, t, steps: torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=max(1, t.epochs * steps)
        ),
        "step",
    ),
}

"""Job specs the tests submit, and predicates on a job's JSON while it runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def iris_spec(**parts: Any) -> dict[str, Any]:
    """A one-epoch MLP on iris: the smallest spec the API accepts. A dict in `parts` is merged
    into the section of that name; anything else replaces it."""
    base: dict[str, Any] = {
        "name": "t",
        "dataset": {"name": "iris"},
        "model": {"arch": "mlp", "hidden": [8]},
        "training": {"epochs": 1, "batch_size": 16, "optimizer": "adam", "lr": 0.01},
    }
    for key, value in parts.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


def digits_mlp_spec(name: str, **training: Any) -> dict[str, Any]:
    """An MLP on digits that checkpoints every epoch and runs long enough (30 epochs unless
    `training` says otherwise) to be interrupted mid-training; seeded, so two runs on the CPU
    give the same weights."""
    return {
        "name": name,
        "dataset": {"name": "digits", "val_fraction": 0.2},
        "model": {"arch": "mlp", "hidden": [256, 256], "dropout": 0.1},
        "training": {
            "epochs": 30,
            "batch_size": 16,
            "optimizer": "adam",
            "lr": 0.001,
            "scheduler": "cosine",
            "seed": 7,
            **training,
        },
        "checkpoint": {"every_epochs": 1, "keep_last": 2},
    }


def at_epoch(n: int) -> Callable[[dict[str, Any]], bool]:
    """A `Stack.wait` predicate: the job is running and has reached epoch `n`."""
    return lambda j: j["status"] == "running" and (j["progress"] or {}).get("epoch", 0) >= n

"""A job's files under a running stack's data dir, and the weight comparison the restart tests make:
a job resumed after a kill or a restart ends with bit-for-bit the weights of an uninterrupted one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tests.helpers.stack import Stack


def job_dir(stack: Stack, job: dict[str, Any]) -> Path:
    return stack.data_dir / "artifacts" / "jobs" / job["id"]


def model_file(stack: Stack, job: dict[str, Any]) -> Path:
    path = job_dir(stack, job) / "model" / "model.safetensors"
    assert path.is_file(), list(job_dir(stack, job).rglob("*"))
    return path


def same_weights(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)

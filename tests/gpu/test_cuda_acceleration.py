"""The speed options of tas.core.acceleration on a CUDA device, on their own (the pipeline's use of
them is tests/gpu/test_cuda_training.py): channels_last under autocast computes what the contiguous
layout computes, and torch.compile builds the training forward with Triton (no fallback)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from tas.core.acceleration import accelerate, use_channels_last
from tas.core.device import resolve_precision
from tas.core.models import build_model
from tas.core.spec import ModelSpec

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
SHAPE = (3, 32, 32)


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(arch="cnn", channels=[16, 32]), SHAPE, 10).to(CUDA)


def steps(
    forward: Callable[[torch.Tensor], torch.Tensor],
    model: nn.Module,
    inputs: Callable[[torch.Tensor], torch.Tensor],
    precision: str,
) -> list[float]:
    """Four adam steps under the precision's autocast (and its scaler for fp16)."""
    p = resolve_precision(precision, CUDA)
    scaler = torch.amp.GradScaler("cuda") if p.needs_scaler else None
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(4):
        X = torch.randint(0, 256, (64, *SHAPE), generator=g, dtype=torch.uint8).to(CUDA)
        y = torch.randint(0, 10, (64,), generator=g).to(CUDA)
        with p.autocast(CUDA)():
            loss = nn.functional.cross_entropy(forward(inputs(X)), y)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        losses.append(float(loss.detach()))
    return losses


def decode(x: torch.Tensor) -> torch.Tensor:
    return x.float().div(255).sub(0.5)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_channels_last_on_cuda_trains_as_the_contiguous_layout(precision: str) -> None:
    plain, fast = cnn(), cnn()
    assert use_channels_last("auto", fast, SHAPE, CUDA)
    acc = accelerate(fast, "auto", False, SHAPE, CUDA)
    conv = [m.weight for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert conv and all(w.is_contiguous(memory_format=torch.channels_last) for w in conv)
    inputs = acc.inputs(decode)
    assert inputs is not None
    a = steps(plain, plain, decode, precision)
    b = steps(acc.training_forward(), fast, inputs, precision)
    tol = 1e-4 if precision == "fp32" else 3e-2  # another summation order, in 8 or 11 bits
    assert b == pytest.approx(a, rel=tol, abs=tol)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_compiled_forward_on_cuda_builds_and_trains(precision: str) -> None:
    """Triton compiles the forward (and the backward at the first backward) on this machine: no
    fallback, and the losses are the eager ones to the precision's rounding."""
    plain, fast = cnn(), cnn()
    acc = accelerate(fast, "on", True, SHAPE, CUDA)
    forward = acc.training_forward()
    inputs = acc.inputs(decode)
    assert inputs is not None
    eager = steps(plain, plain, decode, precision)
    compiled = steps(forward, fast, inputs, precision)
    assert forward.active, forward.fallback
    assert acc.outputs() == {"channels_last": True, "compile": True}
    assert compiled == pytest.approx(eager, rel=3e-2, abs=3e-2)

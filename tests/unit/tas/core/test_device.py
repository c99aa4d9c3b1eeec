"""Device choice never initialises CUDA in the process that forks (a CUDA context does not survive
a fork: every job the worker forks after it would fail on the GPU)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from tas.core.device import resolve_device, resolve_precision
from tas.core.errors import DeviceUnavailable


def test_auto_resolution_leaves_cuda_uninitialised_and_forks_clean() -> None:
    code = textwrap.dedent(
        """
        import os, sys, torch
        import tas.core.pipeline, tas.core.predictor
        from tas.core.device import resolve_device
        resolve_device("auto")
        assert not torch.cuda.is_initialized(), "CUDA initialised by resolve_device"
        assert "sklearn" not in sys.modules and "torchvision" not in sys.modules, "eager imports"
        pid = os.fork()
        if pid == 0:
            os._exit(3 if torch.cuda._is_in_bad_fork() else 0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "forked child is poisoned for CUDA"
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="this machine has a GPU")
def test_cuda_requested_without_a_gpu() -> None:
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(DeviceUnavailable, match="no usable GPU"):
        resolve_device("cuda")


def test_explicit_precisions_are_honoured() -> None:
    cpu = torch.device("cpu")
    bf16 = resolve_precision("bf16", cpu)
    with bf16.autocast(cpu)():
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16 and not bf16.needs_scaler
    assert resolve_precision("fp16", cpu).needs_scaler  # fp16's range needs loss scaling
    assert resolve_precision("fp32", torch.device("cuda")).dtype is None
    with pytest.raises(ValueError, match="allowed: auto, fp32, bf16, fp16"):
        resolve_precision("fp8", cpu)


@pytest.mark.parametrize(
    ("device", "bf16_native", "name", "dtype", "scaler"),
    [
        ("cpu", True, "fp32", None, False),  # the CPU: fp32 unless asked
        ("cuda", True, "bf16", torch.bfloat16, False),  # Ampere and later
        ("cuda", False, "fp16", torch.float16, True),  # Volta, Turing: fp16 with a scaler
    ],
)
def test_auto_precision(
    monkeypatch: pytest.MonkeyPatch,
    device: str,
    bf16_native: bool,
    name: str,
    dtype: torch.dtype | None,
    scaler: bool,
) -> None:
    """auto: mixed precision on any GPU, bf16 where it is native, else fp16 with a scaler. The GPU
    is faked (this asks nothing of a device): only whether it computes bf16 natively matters."""
    asked: list[bool] = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return bf16_native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    p = resolve_precision("auto", torch.device(device))
    assert (p.name, p.dtype, p.needs_scaler) == (name, dtype, scaler)
    # Emulated bf16 (a pre-Ampere GPU) would be slower than fp16: only native support counts.
    assert asked == ([False] if device == "cuda" else [])

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


def test_precision() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).dtype is None  # fp32 on the CPU
    bf16 = resolve_precision("bf16", cpu)
    with bf16.autocast(cpu)():
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    assert resolve_precision("fp16", cpu).needs_scaler

"""Device and precision choice, without touching CUDA before a job asks for it.

The worker forks its job processes. A CUDA context created in the parent does not survive `fork`
(pytorch/pytorch#68861), and the default `torch.cuda.is_available()` calls `cuInit`, which is
enough to poison every later fork. So nothing here runs at import time, and "is there a GPU" is answered
with `torch.cuda.device_count()`, which asks NVML and leaves the driver uninitialised."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from tas.core.errors import DeviceUnavailable

DeviceName = Literal["auto", "cpu", "cuda"]


def _nvidia_driver_absent() -> bool:
    """On Linux the NVIDIA driver shows itself in /proc and /dev. Without it there is no GPU, and
    asking CUDA anyway would register a fork handler that marks every forked child as poisoned."""
    if os.name != "posix" or torch.version.hip:
        return False
    return not any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl"))


def cuda_present() -> bool:
    """Whether a CUDA device can be used, asked without initialising CUDA (NVML when it answers)."""
    if not torch.backends.cuda.is_built() or _nvidia_driver_absent():
        return False
    try:
        return torch.cuda.device_count() > 0
    except Exception:  # a broken driver install reads as "no GPU", never as a crash
        return False


def resolve_device(requested: str = "auto") -> torch.device:
    """ "auto" → the GPU when one is present, else the CPU. Call this in the process that trains."""
    if requested == "auto":
        return torch.device("cuda" if cuda_present() else "cpu")
    if requested == "cuda":
        if not cuda_present():
            raise DeviceUnavailable("resources.device is 'cuda' but this worker has no usable GPU")
        return torch.device("cuda")
    if requested == "cpu":
        return torch.device("cpu")
    raise DeviceUnavailable(f"unknown device {requested!r}; allowed: auto, cpu, cuda")


@dataclass(frozen=True)
class Precision:
    """What `training.precision` resolved to on this device."""

    name: Literal["fp32", "bf16", "fp16"]
    #: The autocast dtype, None for plain fp32.
    dtype: torch.dtype | None
    #: fp16 needs loss scaling (bf16 has fp32's range and does not).
    needs_scaler: bool = False

    def autocast(
        self, device: torch.device
    ) -> Callable[[], contextlib.AbstractContextManager[object]]:
        """A factory of the context manager the forward pass runs under (cheap to call every step)."""
        if self.dtype is None:
            return contextlib.nullcontext
        dtype = self.dtype
        return lambda: torch.autocast(device_type=device.type, dtype=dtype)


FP32 = Precision("fp32", None)
BF16 = Precision("bf16", torch.bfloat16)
FP16 = Precision("fp16", torch.float16, needs_scaler=True)


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """auto: fp32 on the CPU (bf16 autocast there trades accuracy for speed the user did not ask
    for); on a GPU, mixed precision: bf16 autocast where the GPU computes in bf16 natively (Ampere
    and later), else fp16 autocast with a gradient scaler (tensor cores since Volta compute fp16;
    bf16 emulated on them would be slower than fp32). Explicit choices are honoured."""
    if requested == "fp32":
        return FP32
    if requested == "bf16":
        return BF16
    if requested == "fp16":
        return FP16
    if requested != "auto":
        raise ValueError(f"unknown precision {requested!r}; allowed: auto, fp32, bf16, fp16")
    if device.type != "cuda":
        return FP32
    return BF16 if torch.cuda.is_bf16_supported(including_emulation=False) else FP16


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (timing only); a no-op on the CPU, where ops run eagerly."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

"""Tests that need a CUDA device, marked `gpu`: skipped where there is none (the CI's machines),
run on a GPU by `bench/gpu.sh`.

"Is there a GPU" is asked as the core asks it (`tas.core.device.cuda_present`, NVML): asking
`torch.cuda.is_available()` here would initialise CUDA in the pytest process, and any test of the
session that forks after it would get a child that cannot use CUDA."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from tas.core.device import cuda_present

# cuBLAS picks deterministic reductions only with a fixed workspace, read when its handle is made:
# set before any test of the session touches CUDA (the bitwise tests here need it).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if cuda_present():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here; bench/gpu.sh runs these)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def deterministic() -> Iterator[None]:
    """Deterministic kernels (cuDNN's deterministic convolutions, no autotuning) for a test that
    compares two runs bit for bit. warn_only: an op without a deterministic kernel warns, naming
    itself, rather than failing a test whose comparison would then show whether it mattered."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]

"""Which queues a machine may consume, and what devices it has (found without initialising CUDA)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from worker import machine

CPU: list[dict[str, Any]] = [{"id": "cpu", "name": "x86"}]
GPU: list[dict[str, Any]] = [
    *CPU,
    {"id": "cuda:0", "name": "NVIDIA H200", "memory_mb": 143771, "uuid": "GPU-a"},
]

SMI = """0, GPU-aaaa-1111, NVIDIA H200, 143771
1, GPU-bbbb-2222, NVIDIA A100-SXM4-80GB, 81920
"""


def test_a_cpu_only_machine_does_not_consume_the_gpu_queue() -> None:
    s = machine.servable_queues(["default", "cpu", "gpu"], CPU)
    assert s.queues == ["default", "cpu"]
    assert "CUDA device" in s.dropped["gpu"]


def test_a_gpu_machine_consumes_every_queue_once_in_order() -> None:
    s = machine.servable_queues(["gpu", " default", "gpu", ""], GPU)
    assert s.queues == ["gpu", "default"] and s.dropped == {}


def test_nvidia_smi_rows_are_numbered_as_cuda_numbers_the_visible_devices() -> None:
    every = machine.parse_nvidia_smi(SMI, None)
    assert [(d["id"], d["name"], d["memory_mb"]) for d in every] == [
        ("cuda:0", "NVIDIA H200", 143771),
        ("cuda:1", "NVIDIA A100-SXM4-80GB", 81920),
    ]
    # CUDA_VISIBLE_DEVICES=1: the A100 is cuda:0 to the job
    assert [d["name"] for d in machine.parse_nvidia_smi(SMI, "1")] == ["NVIDIA A100-SXM4-80GB"]
    assert [d["uuid"] for d in machine.parse_nvidia_smi(SMI, "GPU-bbbb")] == ["GPU-bbbb-2222"]
    assert machine.parse_nvidia_smi(SMI, "") == []
    # the list ends at the first entry that names no GPU, as in CUDA
    assert [d["id"] for d in machine.parse_nvidia_smi(SMI, "0,7,1")] == ["cuda:0"]


def test_no_cuda_device_without_a_cuda_build_of_torch_or_without_nvidia_smi() -> None:
    assert machine.cuda_devices(smi=lambda: SMI, torch_cuda=lambda: False) == []
    assert machine.cuda_devices(smi=lambda: None, torch_cuda=lambda: True) == []
    assert len(machine.cuda_devices(smi=lambda: SMI, torch_cuda=lambda: True)) == 2


def test_detecting_the_machine_does_not_initialise_cuda() -> None:
    """A worker's main process forks a child per job; a CUDA context would not survive it."""
    code = (
        "import torch\n"
        "from worker.machine import detect_machine\n"
        "m = detect_machine()\n"
        "assert m.devices[0]['id'] == 'cpu' and m.capacity['cpus'] >= 1, m\n"
        "assert m.capacity['memory_mb'] > 0, m\n"
        "assert len(m.capacity['gpu_memory_mb']) == len(m.devices) - 1, m\n"
        "assert not torch.cuda.is_initialized()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_worker_asked_only_for_queues_it_cannot_serve_refuses_to_start(tmp_path: Path) -> None:
    if machine.detect_machine().devices[1:]:
        pytest.skip("this machine has a CUDA device")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAS_")}
    env["TAS_DATA_DIR"] = str(tmp_path / "var")
    out = subprocess.run(
        [sys.executable, "-m", "tas", "worker", "--queues", "gpu"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 2, out.stderr
    assert "not consuming queue 'gpu': it needs a CUDA device" in out.stderr
    assert "no queue in 'gpu' that this machine can serve" in out.stderr

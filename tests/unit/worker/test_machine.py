"""Which queues a machine may consume, and what devices it has (found without initialising CUDA)."""

from __future__ import annotations

import os
import re
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


# ---------------------------------------------------------------------------------------------
# `tas worker --gpus`: the GPUs a worker owns


def test_gpus_are_named_by_nvidia_smi_index_or_uuid() -> None:
    assert [g["index"] for g in machine.choose_gpus("1,0", SMI, None)] == [1, 0]
    assert [g["uuid"] for g in machine.choose_gpus("GPU-bbbb", SMI, None)] == ["GPU-bbbb-2222"]
    assert [g["index"] for g in machine.choose_gpus("all", SMI, None)] == [0, 1]
    # `all` under a CUDA_VISIBLE_DEVICES already set: the GPUs it lets this process see
    assert [g["index"] for g in machine.choose_gpus("ALL", SMI, "1")] == [1]


@pytest.mark.parametrize(
    ("requested", "text", "message"),
    [
        ("2", SMI, "'2' names no GPU of this machine's: 0 (GPU-aaaa-1111, NVIDIA H200), 1 ("),
        ("GPU-", SMI, "'GPU-' names several GPUs"),
        ("0,GPU-aaaa", SMI, "GPU 0 (GPU-aaaa-1111) is named twice"),
        (" , ", SMI, "no GPU named"),
        ("0", "", "nvidia-smi lists no GPU on this machine"),
    ],
)
def test_a_gpu_that_is_not_there_is_refused(requested: str, text: str, message: str) -> None:
    with pytest.raises(machine.GpuChoiceError, match=re.escape(message)):
        machine.choose_gpus(requested, text, None)


def test_owning_gpus_sets_cuda_visible_devices_to_their_uuids() -> None:
    """UUIDs, not indices: CUDA numbers GPUs fastest first unless told otherwise, so an
    nvidia-smi index could name another GPU to it. What the worker then detects is what it owns,
    numbered from cuda:0 in the order asked for."""
    environ = {"CUDA_VISIBLE_DEVICES": "0"}  # replaced, not narrowed: --gpus says which
    owned = machine.own_gpus("1,0", environ, smi=lambda: SMI, torch_cuda=lambda: True)
    assert [g["index"] for g in owned] == [1, 0]
    assert environ["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb-2222,GPU-aaaa-1111"
    seen = machine.parse_nvidia_smi(SMI, environ["CUDA_VISIBLE_DEVICES"])
    assert [(d["id"], d["uuid"]) for d in seen] == [
        ("cuda:0", "GPU-bbbb-2222"),
        ("cuda:1", "GPU-aaaa-1111"),
    ]
    with pytest.raises(machine.GpuChoiceError, match="built without CUDA"):
        machine.own_gpus("0", {}, smi=lambda: SMI, torch_cuda=lambda: False)
    with pytest.raises(machine.GpuChoiceError, match="nvidia-smi is missing"):
        machine.own_gpus("0", {}, smi=lambda: None, torch_cuda=lambda: True)


def test_a_gpu_worker_consumes_the_gpu_queue_and_runs_a_job_per_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tas import cli

    owned = [{"index": i, "uuid": f"GPU-{i}", "name": "H200"} for i in range(3)]
    monkeypatch.setattr(machine, "own_gpus", lambda requested: owned)
    assert cli._gpu_worker(None, None, None) == ("default,cpu", 1)  # no --gpus: as before
    assert cli._gpu_worker(None, "cpu", 4) == ("cpu", 4)
    assert cli._gpu_worker("all", None, None) == ("gpu,default", 3)
    assert cli._gpu_worker("0,1,2", "default", None) == ("default,gpu", 3)
    assert cli._gpu_worker("0,1,2", "gpu", 1) == ("gpu", 1)


def test_a_worker_given_a_gpu_this_machine_lacks_refuses_to_start(tmp_path: Path) -> None:
    if machine.detect_machine().devices[1:]:
        pytest.skip("this machine has a CUDA device")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAS_")}
    env["TAS_DATA_DIR"] = str(tmp_path / "var")
    out = subprocess.run(
        [sys.executable, "-m", "tas", "worker", "--gpus", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 2, out.stderr
    assert "--gpus 0:" in out.stdout + out.stderr
    assert "no GPU" in out.stdout + out.stderr or "without CUDA" in out.stdout + out.stderr

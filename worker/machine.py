"""What this machine offers a worker: its devices (CPU, and GPUs listed by `nvidia-smi`, mapped
through `CUDA_VISIBLE_DEVICES` the way the CUDA runtime maps them), its capacity, and which of the
requested queues it can serve; and the GPUs a worker is given to own (`tas worker --gpus`).

Detection never initialises CUDA in the calling process: a worker's main process forks a child per
job, and a CUDA context does not survive a fork."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# What this machine offers


def _has_cuda_device(devices: Sequence[dict[str, Any]]) -> bool:
    return any(str(d.get("id", "")).startswith("cuda") for d in devices)


#: queue → (can these devices serve it, why not). A queue missing here needs nothing special.
QUEUE_NEEDS: dict[str, tuple[Callable[[Sequence[dict[str, Any]]], bool], str]] = {
    "gpu": (_has_cuda_device, "it needs a CUDA device and this machine has none"),
}


@dataclass(frozen=True)
class Servable:
    queues: list[str]
    #: queue → why this worker does not consume it
    dropped: dict[str, str] = field(default_factory=dict)


def servable_queues(requested: Iterable[str], devices: Sequence[dict[str, Any]]) -> Servable:
    """The requested queues this machine's devices can serve, in order, and why the others not:
    a worker that consumed `gpu` without a CUDA device would claim GPU jobs only to fail them."""
    kept: list[str] = []
    dropped: dict[str, str] = {}
    for q in requested:
        q = q.strip()
        if not q or q in kept or q in dropped:
            continue
        need = QUEUE_NEEDS.get(q)
        if need is not None and not need[0](devices):
            dropped[q] = need[1]
        else:
            kept.append(q)
    return Servable(kept, dropped)


def _run_nvidia_smi() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [
                exe,
                "--query-gpu=index,uuid,name,memory.total",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("nvidia-smi failed (%s): no CUDA device listed", exc)
        return None
    return out.stdout


def _smi_rows(text: str) -> list[dict[str, Any]]:
    """nvidia-smi's rows: its own index, the UUID, the name, the memory (MiB)."""
    gpus: list[dict[str, Any]] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        try:
            memory = int(float(parts[3]))
        except ValueError:
            memory = None
        gpus.append({"index": int(parts[0]), "uuid": parts[1], "name": parts[2], "mb": memory})
    return gpus


def parse_nvidia_smi(text: str, visible: str | None) -> list[dict[str, Any]]:
    """`nvidia-smi --query-gpu=index,uuid,name,memory.total` rows as devices `cuda:N`, numbered
    as the CUDA runtime numbers them under `CUDA_VISIBLE_DEVICES` (indices or UUID prefixes; the
    list ends at the first entry that names no GPU, as in CUDA)."""
    gpus = _smi_rows(text)
    if visible is not None:
        chosen = []
        for entry in (e.strip() for e in visible.split(",")):
            match = [
                g
                for g in gpus
                if (entry.isdigit() and g["index"] == int(entry))
                or (entry and not entry.isdigit() and g["uuid"].startswith(entry))
            ]
            if len(match) != 1:
                break
            chosen.append(match[0])
        gpus = chosen
    return [
        {"id": f"cuda:{i}", "name": g["name"], "memory_mb": g["mb"], "uuid": g["uuid"]}
        for i, g in enumerate(gpus)
    ]


class GpuChoiceError(ValueError):
    """`--gpus` names no GPU this machine has (or this machine has none a job could use)."""


def _match_gpu(entry: str, gpus: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if entry.isdigit():
        found = [g for g in gpus if g["index"] == int(entry)]
    else:
        found = [g for g in gpus if entry and g["uuid"].startswith(entry)]
    if len(found) != 1:
        listed = ", ".join(f"{g['index']} ({g['uuid']}, {g['name']})" for g in gpus)
        why = "names several GPUs" if found else "names no GPU"
        raise GpuChoiceError(f"{entry!r} {why} of this machine's: {listed}")
    return found[0]


def choose_gpus(requested: str, smi_text: str, visible: str | None) -> list[dict[str, Any]]:
    """The GPUs `tas worker --gpus` names: `all` (those `visible` already lets this process
    see, every one when it is unset), or nvidia-smi indices and UUIDs (prefixes) separated by
    commas, each naming exactly one GPU, none twice. Rows as `parse_nvidia_smi` reads them before
    numbering (`index` is nvidia-smi's), in the order asked for."""
    every = [
        {"index": g["index"], "uuid": g["uuid"], "name": g["name"]} for g in _smi_rows(smi_text)
    ]
    if not every:
        raise GpuChoiceError("nvidia-smi lists no GPU on this machine")
    if requested.strip().lower() == "all":
        if visible is None:
            return every
        seen = {d["uuid"] for d in parse_nvidia_smi(smi_text, visible)}
        chosen = [g for g in every if g["uuid"] in seen]
        if not chosen:
            raise GpuChoiceError(f"CUDA_VISIBLE_DEVICES={visible!r} leaves no GPU visible")
        return chosen
    chosen = []
    for entry in (e.strip() for e in requested.split(",")):
        if not entry:
            continue
        gpu = _match_gpu(entry, every)
        if gpu in chosen:
            raise GpuChoiceError(f"GPU {gpu['index']} ({gpu['uuid']}) is named twice")
        chosen.append(gpu)
    if not chosen:
        raise GpuChoiceError("no GPU named: give indices or UUIDs (0,1) or all")
    return chosen


def _torch_has_cuda() -> bool:
    """Whether the installed torch was built with CUDA: reading the build's version string
    touches no driver."""
    try:
        import torch
    except ImportError:
        return False
    return torch.version.cuda is not None


def cuda_devices(
    smi: Callable[[], str | None] = _run_nvidia_smi,
    visible: str | None = None,
    torch_cuda: Callable[[], bool] = _torch_has_cuda,
) -> list[dict[str, Any]]:
    """The CUDA devices a job on this machine could use, without initialising CUDA here."""
    if not torch_cuda():
        return []
    text = smi()
    if not text:
        return []
    return parse_nvidia_smi(text, visible)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_mb() -> int | None:
    """Physical memory, bounded by the cgroup's limit when the worker runs in a container."""
    total = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if raw.isdigit():
            limit = int(raw) // 2**20
            total = limit if total is None else min(total, limit)
        break
    return total


@dataclass(frozen=True)
class MachineInfo:
    devices: list[dict[str, Any]]
    capacity: dict[str, Any]


@cache
def detect_machine() -> MachineInfo:
    """This machine's devices and capacity (cached: the CLI and the worker's ready signal run in
    one process and must agree)."""
    gpus = cuda_devices(visible=os.environ.get("CUDA_VISIBLE_DEVICES"))
    devices = [{"id": "cpu", "name": _cpu_name()}, *gpus]
    capacity = {
        "memory_mb": memory_mb(),
        "gpu_memory_mb": [g["memory_mb"] for g in gpus],
        "cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
    }
    return MachineInfo(devices, capacity)


def own_gpus(
    requested: str,
    environ: MutableMapping[str, str] = os.environ,
    smi: Callable[[], str | None] = _run_nvidia_smi,
    torch_cuda: Callable[[], bool] = _torch_has_cuda,
) -> list[dict[str, Any]]:
    """Make this process (and every process it starts) see exactly the GPUs `requested` names:
    CUDA_VISIBLE_DEVICES is set to their UUIDs (the CUDA runtime orders GPUs fastest first
    unless told otherwise, so an nvidia-smi index could name another GPU to it; a UUID cannot).
    Must run before anything detects devices; returns the chosen GPUs."""
    if not torch_cuda():
        raise GpuChoiceError("the installed torch is built without CUDA")
    text = smi()
    if not text:
        raise GpuChoiceError("nvidia-smi is missing or lists no GPU on this machine")
    chosen = choose_gpus(requested, text, environ.get("CUDA_VISIBLE_DEVICES"))
    environ["CUDA_VISIBLE_DEVICES"] = ",".join(g["uuid"] for g in chosen)
    detect_machine.cache_clear()
    return chosen

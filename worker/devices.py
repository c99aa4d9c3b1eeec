"""Device slots: which GPUs a run may use, so that two jobs never train on the same one.

A slot is a lock file per physical GPU (named by its UUID from `nvidia-smi`, or by its physical
index when the UUID is unknown) under this machine's cache directory, held with `flock` by the
process that runs the job. The kernel drops a `flock` when the last descriptor of its open file is
closed, so a slot dies with its holder however that ends (a finished run, an exception, `kill -9`):
nothing to clean up, no stale lease to expire. Being keyed by the physical GPU, the same slots
guard the pool children of one worker and the workers of one machine alike, however their
`--gpus` (or `CUDA_VISIBLE_DEVICES`) overlap.

N slots are taken all or nothing, each without blocking: a run that cannot have all N releases the
ones it took and waits before trying again, so two runs asking for overlapping sets never hold one
each while waiting for the other's (no deadlock). The wait backs off to one try a second and is
bounded; a run that gives up raises `DevicesBusy` before it has claimed the job, so the job stays
queued and its message can be handed back.

Nothing here initialises CUDA: the devices come from `worker.machine` (nvidia-smi), and the run
is told which `CUDA_VISIBLE_DEVICES` to give its process (or its torchrun group)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tas.settings import Settings

log = logging.getLogger(__name__)

#: The first pause between tries while every wanted slot is not free, and the longest.
FIRST_PAUSE_S = 0.05
MAX_PAUSE_S = 1.0


class DevicesBusy(Exception):
    """The slots were not free within the wait (or the wait was stopped): the job was not
    claimed, and another worker, or this one later, may run it."""


class NotEnoughDevices(DevicesBusy):
    """More slots asked for than this worker has GPUs: no wait here would ever give them, but a
    larger worker of the same queue may (the submit checked that one is live). Raised once the
    wait has passed, as DevicesBusy is, so a job that lands on a worker too small for it is
    handed back at the pace of a busy one, never in a hot loop."""


@dataclass(frozen=True)
class Slots:
    """The GPUs a run holds (empty for a run that uses none)."""

    #: CUDA indices as this process numbers them (under its own CUDA_VISIBLE_DEVICES).
    indices: list[int]
    #: What the run's CUDA_VISIBLE_DEVICES must be so that it sees exactly these GPUs, as
    #: cuda:0..N-1 ("" hides every GPU: a run that was given none trains on the CPU).
    cuda_visible_devices: str
    #: The lock files' descriptors (held until the context ends). A launcher may pass them to a
    #: process that outlives this one (`subprocess.Popen(pass_fds=...)`): the slots are then
    #: free only once both are gone.
    fds: list[int] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """The environment a run's process (or torchrun group) is started with."""
        return {"CUDA_VISIBLE_DEVICES": self.cuda_visible_devices}


def gpus_wanted(device: str, processes: int, gpus_here: int) -> int:
    """How many GPUs a job with `resources` (device, processes) takes on a worker with
    `gpus_here` GPUs: one per process on `cuda`; on `auto` the same when the worker has enough
    of them, else none (it trains on the CPU, as `auto` does on a machine without a GPU)."""
    if device == "cuda":
        return processes
    if device == "auto" and 0 < processes <= gpus_here:
        return processes
    return 0


def cuda_devices_here() -> list[dict[str, Any]]:
    """This worker's GPUs (`worker.machine`: listed by nvidia-smi, never by initialising CUDA)."""
    from worker.machine import detect_machine

    return [d for d in detect_machine().devices if str(d.get("id", "")).startswith("cuda:")]


def _visible_entries(visible: str | None) -> list[str]:
    return [e.strip() for e in visible.split(",")] if visible else []


def _physical(index: int, entries: Sequence[str]) -> str:
    """What names visible GPU `index` to a process started from this one: this process's own
    CUDA_VISIBLE_DEVICES entry for it (an index or a UUID), or the index when it has none."""
    return entries[index] if index < len(entries) else str(index)


_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _lock_name(device: dict[str, Any], index: int, entries: Sequence[str]) -> str:
    uuid = device.get("uuid")
    key = str(uuid) if uuid else f"index-{_physical(index, entries)}"
    return _SAFE.sub("_", key) + ".lock"


def lock_dir(settings: Settings) -> Path:
    """Where the slots' lock files live: this machine's cache directory (never shared)."""
    return settings.resolved_local_cache_dir / "devices"


@dataclass(frozen=True)
class _Candidate:
    index: int
    path: Path


def _candidates(
    root: Path, devices: Sequence[dict[str, Any]], visible: str | None
) -> list[_Candidate]:
    entries = _visible_entries(visible)
    out = []
    for d in devices:
        index = int(str(d["id"]).split(":", 1)[1])
        out.append(_Candidate(index, root / _lock_name(d, index, entries)))
    return sorted(out, key=lambda c: c.index)


def _try_take(candidates: Sequence[_Candidate], n: int, label: str) -> list[tuple[int, int]]:
    """N free slots, locked, as (index, fd); or none at all (any taken are released)."""
    taken: list[tuple[int, int]] = []
    for c in candidates:
        fd = os.open(c.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            _release(taken)
            raise
        # Who holds it, for the message of a run that waits (read by `holders`).
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {label}\n".encode(), 0)
        taken.append((c.index, fd))
        if len(taken) == n:
            return taken
    _release(taken)
    return []


def _release(taken: Sequence[tuple[int, int]]) -> None:
    for _, fd in taken:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing the last descriptor drops the flock


def holders(settings: Settings, devices: Sequence[dict[str, Any]] | None = None) -> dict[int, str]:
    """Which visible GPU is held, and by what (`<pid> <label>` as its holder wrote it). For
    messages only: the probe is a shared lock taken for an instant, during which a run trying
    that GPU finds it busy and tries again on its next round."""
    devices = cuda_devices_here() if devices is None else devices
    out: dict[int, str] = {}
    for c in _candidates(lock_dir(settings), devices, os.environ.get("CUDA_VISIBLE_DEVICES")):
        try:
            fd = os.open(c.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                out[c.index] = os.pread(fd, 200, 0).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)
    return out


@contextlib.contextmanager
def device_slots(
    settings: Settings,
    n: int,
    *,
    wait_s: float | None,
    devices: Sequence[dict[str, Any]] | None = None,
    stop: Callable[[], bool] = lambda: False,
    label: str = "",
) -> Iterator[Slots]:
    """Hold `n` of this worker's GPUs for the length of the block, and yield them.

    `n` 0 holds nothing and yields Slots whose CUDA_VISIBLE_DEVICES hides every GPU (a run that
    takes none must not put a CUDA context on one another job holds). While the `n` are not all
    free it waits, trying again with a backoff up to a second apart, until `wait_s` has passed
    (None: no bound) or `stop()` says to give up: then DevicesBusy. More than the worker has:
    NotEnoughDevices (a DevicesBusy) once the same wait has passed. `devices` (the worker's
    `cuda:N` devices) defaults to this machine's as `worker.machine` found them; `label` (a job
    id) is written beside the holder's pid."""
    if n < 0:
        raise ValueError(f"n must be at least 0, not {n}")
    if n == 0:
        yield Slots([], "")
        return
    devices = cuda_devices_here() if devices is None else devices
    if n > len(devices):
        _wait_out(wait_s, stop)
        raise NotEnoughDevices(
            f"{n} GPUs wanted but this worker has {len(devices)}"
            + (f" ({', '.join(str(d['id']) for d in devices)})" if devices else "")
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    root = lock_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    candidates = _candidates(root, devices, visible)
    deadline = None if wait_s is None else time.monotonic() + wait_s
    pause = FIRST_PAUSE_S
    said = False
    while True:
        taken = _try_take(candidates, n, label)
        if taken:
            break
        if stop() or (deadline is not None and time.monotonic() >= deadline):
            raise DevicesBusy(_busy_message(settings, devices, n, wait_s))
        if not said:
            log.info(
                "%s waiting for %d free GPU(s): %s", label or "run", n, _held(settings, devices)
            )
            said = True
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        time.sleep(pause if left is None else min(pause, left))
        pause = min(pause * 2, MAX_PAUSE_S)
    entries = _visible_entries(visible)
    indices = [i for i, _ in taken]
    slots = Slots(
        indices, ",".join(_physical(i, entries) for i in indices), [fd for _, fd in taken]
    )
    log.info("%s holds GPU(s) %s", label or "run", slots.cuda_visible_devices)
    try:
        yield slots
    finally:
        _release(taken)


def _wait_out(wait_s: float | None, stop: Callable[[], bool]) -> None:
    """Sleep through a wait that cannot succeed, still ending it early when told to stop (a
    wait without a bound ends only then)."""
    deadline = None if wait_s is None else time.monotonic() + wait_s
    while not stop():
        left = MAX_PAUSE_S if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(MAX_PAUSE_S, left))


def job_slots(
    settings: Settings,
    resources: Mapping[str, Any],
    *,
    label: str,
    stop: Callable[[], bool] = lambda: False,
    devices: Sequence[dict[str, Any]] | None = None,
) -> contextlib.AbstractContextManager[Slots]:
    """`device_slots` for a job whose spec has these `resources` (device, processes), on this
    worker's GPUs (`gpus_wanted`), waiting at most TAS_DEVICE_WAIT_S. A job that asks for
    `auto` runs on the worker's TAS_DEVICE, as the run resolves it."""
    devices = cuda_devices_here() if devices is None else devices
    device = str(resources.get("device", "auto"))
    if device == "auto":
        device = settings.device
    n = gpus_wanted(device, int(resources.get("processes", 1)), len(devices))
    return device_slots(
        settings, n, wait_s=settings.device_wait_s, devices=devices, stop=stop, label=label
    )


def _held(settings: Settings, devices: Sequence[dict[str, Any]]) -> str:
    held = holders(settings, devices)
    return "; ".join(f"cuda:{i} held by {who}" for i, who in sorted(held.items())) or "none held"


def _busy_message(
    settings: Settings, devices: Sequence[dict[str, Any]], n: int, wait_s: float | None
) -> str:
    waited = "" if wait_s is None else f" within {wait_s:g} s"
    return f"{n} of {len(devices)} GPUs not free{waited} ({_held(settings, devices)})"

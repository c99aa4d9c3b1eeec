"""Device slots: a GPU held by one run is never given to another, across processes (the pool
children of a worker, and workers whose GPUs overlap), and a holder's death frees it.

No GPU is needed: the worker's devices are given as `worker.machine` lists them, and the holders
are real processes taking the real lock files."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tas.settings import Settings
from worker import devices
from worker.devices import DevicesBusy, NotEnoughDevices, device_slots, gpus_wanted


def gpus(*uuids: str) -> list[dict[str, Any]]:
    return [
        {"id": f"cuda:{i}", "name": "NVIDIA H200", "memory_mb": 143771, "uuid": u}
        for i, u in enumerate(uuids)
    ]


FOUR = gpus("GPU-a", "GPU-b", "GPU-c", "GPU-d")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "var")


HOLDER = textwrap.dedent(
    """
    import json, sys
    from tas.settings import Settings
    from worker.devices import device_slots

    data_dir, devs, n, label = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    with device_slots(Settings(data_dir=data_dir), n, wait_s=None, devices=devs, label=label) as s:
        print("held", json.dumps(s.indices, separators=(",", ":")), flush=True)
        sys.stdin.readline()  # release when told (or never: killed)
    print("released", flush=True)
    """
)


class Holder:
    """Another process holding slots (as another job's run would)."""

    def __init__(
        self, settings: Settings, devs: list[dict[str, Any]], n: int, label: str = "job-x"
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(settings.data_dir), json.dumps(devs), str(n), label],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def held(self) -> list[int]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        assert line[:1] == ["held"], line
        return list(json.loads(line[1]))

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"
        assert self.proc.wait(10) == 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for h in started:
        if h.proc.poll() is None:
            h.kill()


def test_how_many_gpus_a_job_takes() -> None:
    assert gpus_wanted("cuda", 2, 4) == 2
    assert gpus_wanted("cuda", 2, 0) == 2  # never routed here; device_slots refuses it
    assert gpus_wanted("auto", 2, 4) == 2
    assert gpus_wanted("auto", 1, 0) == 0  # no GPU: the CPU
    assert gpus_wanted("auto", 4, 2) == 0  # too few GPUs for its processes: the CPU
    assert gpus_wanted("cpu", 2, 4) == 0


def test_a_run_that_takes_no_gpu_sees_none(settings: Settings) -> None:
    with device_slots(settings, 0, wait_s=0, devices=FOUR) as slots:
        assert slots.indices == [] and slots.env == {"CUDA_VISIBLE_DEVICES": ""}
    assert not devices.lock_dir(settings).exists()  # nothing taken, nothing written


def test_more_gpus_than_the_worker_has_is_handed_back_after_the_wait(settings: Settings) -> None:
    """A job on a worker too small for it (a larger one of its queue may take it): refused as a
    busy one is, after the wait (never at once, or the message would bounce in a hot loop), and
    sooner when the worker stops."""
    start = time.monotonic()
    with (
        pytest.raises(NotEnoughDevices, match="3 GPUs wanted but this worker has 2"),
        device_slots(settings, 3, wait_s=0.3, devices=FOUR[:2]),
    ):
        pass
    assert 0.3 <= time.monotonic() - start < 1.5
    start = time.monotonic()
    with (
        pytest.raises(DevicesBusy),
        device_slots(settings, 3, wait_s=None, devices=[], stop=lambda: True),
    ):
        pass
    assert time.monotonic() - start < 0.5


def test_a_job_takes_gpus_by_its_resources(settings: Settings) -> None:
    fast = settings.model_copy(update={"device_wait_s": 0.1})
    with devices.job_slots(fast, {"device": "cuda", "processes": 2}, label="j", devices=FOUR) as s:
        assert s.indices == [0, 1]
    with devices.job_slots(fast, {"device": "auto"}, label="j", devices=FOUR) as s:
        assert s.indices == [0]
    with devices.job_slots(fast, {"device": "cpu", "processes": 4}, label="j", devices=FOUR) as s:
        assert s.indices == [] and s.cuda_visible_devices == ""
    with devices.job_slots(fast, {"device": "auto", "processes": 4}, label="j", devices=[]) as s:
        assert s.indices == []  # no GPU here: auto trains on the CPU
    # a worker whose TAS_DEVICE is cpu runs `auto` jobs there: they hold no GPU
    on_cpu = fast.model_copy(update={"device": "cpu"})
    with devices.job_slots(on_cpu, {"device": "auto"}, label="j", devices=FOUR) as s:
        assert s.indices == []


def test_a_held_gpu_waits_for_its_holder_and_is_taken_when_released(
    settings: Settings, holders: list[Holder]
) -> None:
    one = gpus("GPU-only")
    h = Holder(settings, one, 1, label="job-1")
    holders.append(h)
    assert h.held() == [0]
    assert devices.holders(settings, one) == {0: f"{h.proc.pid} job-1"}

    # busy: a bounded wait ends in DevicesBusy, naming who holds it
    start = time.monotonic()
    with (
        pytest.raises(DevicesBusy, match=rf"cuda:0 held by {h.proc.pid} job-1"),
        device_slots(settings, 1, wait_s=0.5, devices=one),
    ):
        pass
    assert 0.5 <= time.monotonic() - start < 2

    # a waiting run gets it as soon as the holder lets go (not after its whole wait)
    h.proc.stdin.write("\n")  # type: ignore[union-attr]
    h.proc.stdin.flush()  # type: ignore[union-attr]
    start = time.monotonic()
    with device_slots(settings, 1, wait_s=30, devices=one, label="job-2") as slots:
        waited = time.monotonic() - start
        assert slots.indices == [0]
        assert devices.holders(settings, one) == {0: f"{os.getpid()} job-2"}
    assert waited < 3, waited
    assert devices.holders(settings, one) == {}


def test_a_holder_killed_with_sigkill_frees_its_gpu(
    settings: Settings, holders: list[Holder]
) -> None:
    one = gpus("GPU-only")
    h = Holder(settings, one, 1)
    holders.append(h)
    assert h.held() == [0]
    h.kill()
    with device_slots(settings, 1, wait_s=5, devices=one) as slots:
        assert slots.indices == [0]


def test_two_jobs_never_share_a_gpu_and_several_are_taken_all_or_none(
    settings: Settings, holders: list[Holder]
) -> None:
    h = Holder(settings, FOUR, 1)
    holders.append(h)
    assert h.held() == [0]
    with device_slots(settings, 2, wait_s=0, devices=FOUR) as two:
        assert two.indices == [1, 2]
        # one left of four: a 2-GPU run takes none of it (no half-held set while it waits)
        with pytest.raises(DevicesBusy), device_slots(settings, 2, wait_s=0.3, devices=FOUR):
            pass
        assert set(devices.holders(settings, FOUR)) == {0, 1, 2}
        with device_slots(settings, 1, wait_s=0, devices=FOUR) as last:
            assert last.indices == [3]
    h.release()
    with device_slots(settings, 4, wait_s=0, devices=FOUR) as every:
        assert every.indices == [0, 1, 2, 3]


def test_workers_given_overlapping_gpus_share_their_slots(
    settings: Settings, holders: list[Holder]
) -> None:
    """`--gpus 0,1` and `--gpus 1,2`: GPU 1 is cuda:1 to one and cuda:0 to the other, and the
    same lock (its UUID) to both."""
    first = gpus("GPU-zero", "GPU-one")
    second = gpus("GPU-one", "GPU-two")
    h = Holder(settings, first, 2)
    holders.append(h)
    assert h.held() == [0, 1]
    with pytest.raises(DevicesBusy), device_slots(settings, 2, wait_s=0.2, devices=second):
        pass
    with device_slots(settings, 1, wait_s=0, devices=second) as slots:
        assert slots.indices == [1]  # GPU-two, the one the other worker does not hold


def test_the_run_is_told_the_gpus_as_this_process_names_them(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the worker's CUDA_VISIBLE_DEVICES (UUIDs, as `--gpus` sets it), cuda:1 is its second
    entry; the run's CUDA_VISIBLE_DEVICES names exactly that GPU."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-a,GPU-b,GPU-c,GPU-d")
    with (
        device_slots(settings, 1, wait_s=0, devices=FOUR),
        device_slots(settings, 2, wait_s=0, devices=FOUR) as slots,
    ):
        assert slots.indices == [1, 2]
        assert slots.env == {"CUDA_VISIBLE_DEVICES": "GPU-b,GPU-c"}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    no_uuid = [{"id": "cuda:0"}, {"id": "cuda:1"}]  # keyed by index when nvidia-smi gives none
    with device_slots(settings, 2, wait_s=0, devices=no_uuid) as slots:
        assert slots.cuda_visible_devices == "0,1"
        names = sorted(p.name for p in devices.lock_dir(settings).iterdir())
        assert "index-0.lock" in names and "index-1.lock" in names


def test_a_wait_gives_up_when_told_to_stop(settings: Settings, holders: list[Holder]) -> None:
    """A worker stopping while a job waits for its GPUs: the wait ends (DevicesBusy, the job
    unclaimed) within a try, not after TAS_DEVICE_WAIT_S."""
    one = gpus("GPU-only")
    h = Holder(settings, one, 1)
    holders.append(h)
    h.held()
    deadline = time.monotonic() + 0.3
    start = time.monotonic()
    with (
        pytest.raises(DevicesBusy),
        device_slots(settings, 1, wait_s=60, devices=one, stop=lambda: time.monotonic() > deadline),
    ):
        pass
    assert time.monotonic() - start < 2


def test_competing_runs_never_overlap_on_a_gpu_and_all_finish(
    settings: Settings, tmp_path: Path
) -> None:
    """Three processes, each taking 2 of 3 GPUs ten times over: every interval a GPU was held is
    disjoint from every other's on that GPU, and none deadlocks (each ends within its wait)."""
    log = tmp_path / "held.jsonl"
    three = gpus("GPU-a", "GPU-b", "GPU-c")
    script = textwrap.dedent(
        """
        import json, sys, time
        from tas.settings import Settings
        from worker.devices import device_slots

        data_dir, devs, log = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
        for _ in range(10):
            with device_slots(Settings(data_dir=data_dir), 2, wait_s=30, devices=devs) as s:
                t0 = time.monotonic()
                time.sleep(0.02)
                t1 = time.monotonic()
            with open(log, "a") as f:
                f.write(json.dumps({"gpus": s.indices, "t0": t0, "t1": t1}) + "\\n")
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(settings.data_dir), json.dumps(three), str(log)]
        )
        for _ in range(3)
    ]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    spans = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(spans) == 30
    for gpu in range(3):
        on_it = sorted((s["t0"], s["t1"]) for s in spans if gpu in s["gpus"])
        for (_, end), (start, _) in itertools.pairwise(on_it):
            assert end <= start, f"two runs on cuda:{gpu} at once"

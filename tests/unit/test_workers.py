"""Workers: which queues a machine may consume, what devices it has (found without initialising
CUDA), and the `workers` table that says which queued jobs no live worker can run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

import worker.presence as presence_module
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store import leases as lease_store
from tas.store import workers
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.migrate import upgrade
from tas.store.orm import Job, Worker, utcnow
from worker import machine
from worker.presence import Presence

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


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    url = f"sqlite:///{tmp_path / 'tas.db'}"
    upgrade(url)
    return make_sessionmaker(make_engine(url))


def info(node: str, queues: list[str], pid: int = 100) -> workers.WorkerInfo:
    return workers.WorkerInfo(node, "host", pid, queues, CPU, {"cpus": 2}, 1)


def age(sessions: sessionmaker[Session], node: str, seconds: float) -> None:
    with sessions() as s:
        s.execute(
            update(Worker)
            .where(Worker.id == node)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )
        s.commit()


def test_liveness_follows_the_heartbeat_and_the_stored_status(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as s:
        workers.register(s, info("a@h", ["default", "cpu"]))
        workers.register(s, info("b@h", ["cpu"]))
        workers.register(s, info("c@h", ["default"]))
        s.commit()
    age(sessions, "b@h", 16)  # three 5 s beats missed: lost
    with sessions() as s:
        workers.beat(s, info("c@h", ["default"]), workers.DRAINING)
        s.commit()
        assert [w.id for w in workers.live(s, heartbeat_s=5)] == ["a@h"]
        states = {w.id: st for w, st in workers.listed(s, heartbeat_s=5, forget_s=3600)}
    assert states == {"a@h": "online", "b@h": "lost", "c@h": "draining"}
    with sessions() as s:
        workers.beat(s, info("a@h", ["default", "cpu"]), workers.OFFLINE)
        s.commit()
        states = {w.id: st for w, st in workers.listed(s, heartbeat_s=5, forget_s=3600)}
        assert states["a@h"] == "offline" and workers.live(s, heartbeat_s=5) == []


def test_a_restart_under_the_same_node_name_takes_the_row_over(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as s:
        first = workers.register(s, info("a@h", ["cpu"], pid=1)).started_at
        s.commit()
    with sessions() as s:
        workers.beat(s, info("a@h", ["default"], pid=2), workers.ONLINE)
        s.commit()
        row = s.get(Worker, "a@h")
        assert row is not None and row.pid == 2 and row.queues == ["default"]
        assert row.started_at > first


def test_old_rows_are_forgotten(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        workers.register(s, info("old@h", ["cpu"]))
        workers.register(s, info("new@h", ["cpu"]))
        s.commit()
    age(sessions, "old@h", 7200)
    with sessions() as s:
        assert [w.id for w, _ in workers.listed(s, heartbeat_s=5, forget_s=3600)] == ["new@h"]
        assert workers.forget_old(s, older_than_s=3600) == 1
        s.commit()
        assert s.get(Worker, "old@h") is None


def test_a_queued_job_says_what_it_waits_for(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        gpu_job = job_store.create_job(
            s, {"name": "g", "resources": {"device": "cuda"}}, tenant="default", max_attempts=3
        )
        cpu_job = job_store.create_job(
            s, {"name": "c", "resources": {"device": "cpu"}}, tenant="default", max_attempts=3
        )
        jobs = [gpu_job, cpu_job]
        workers.annotate_waiting(s, jobs, heartbeat_s=5)
        assert all(j.waiting_for["reason"].startswith("no live worker") for j in jobs)  # type: ignore[attr-defined]
        assert "no worker is live" in gpu_job.waiting_for["reason"]  # type: ignore[attr-defined]

        workers.register(s, info("cpu@h", ["default", "cpu"]))
        s.flush()
        workers.annotate_waiting(s, jobs, heartbeat_s=5)
        assert cpu_job.waiting_for is None  # type: ignore[attr-defined]
        waiting = gpu_job.waiting_for  # type: ignore[attr-defined]
        assert waiting["queue"] == "gpu"
        assert "cpu@h consumes default, cpu" in waiting["reason"]
        assert "CUDA device" in waiting["reason"]


def test_running_jobs_are_counted_per_worker_from_their_leases(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as s:
        ids = [
            job_store.create_job(s, {"name": f"j{i}"}, tenant="default", max_attempts=3).id
            for i in range(3)
        ]
        s.commit()
    for job_id, owner in zip(ids, ["w1@h/10/aa", "w1@h/11/bb", "w2@h/12/cc"], strict=True):
        with sessions() as s:
            assert lease_store.claim(s, job_id, owner, 30) is not None
            s.commit()
    with sessions() as s:
        assert workers.running_by_worker(s) == {"w1@h": 2, "w2@h": 1}
        s.execute(update(Job).where(Job.id == ids[0]).values(status="succeeded"))
        assert workers.running_by_worker(s) == {"w1@h": 1, "w2@h": 1}


def test_presence_registers_drains_and_goes_offline(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """The worker's row through a warm shutdown: online at ready, draining from the moment the
    shutdown begins (the signal handler only flags it: the heartbeat thread writes), offline at
    the end."""
    settings = Settings(data_dir=tmp_path, worker_heartbeat_s=30)
    running = [True]  # a job is running when the shutdown begins
    presence = Presence(settings, info("p@h", ["cpu"]), sessions, busy=lambda: running[0])
    presence.start()

    def status() -> str:
        with sessions() as s:
            row = s.get(Worker, "p@h")
            assert row is not None
            return row.status

    assert status() == "online"
    # a pool child forked now starts with no presence and a free lock (never one held mid-beat)
    presence_module._presence = presence
    try:
        pid = os.fork()
        if pid == 0:
            ok = presence_module._presence is None and presence_module._BEAT_LOCK.acquire(False)
            os._exit(0 if ok else 1)
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        presence_module._presence = None
    presence.draining()

    def becomes(expected: str) -> str:
        deadline = time.monotonic() + 5
        while status() != expected and time.monotonic() < deadline:  # the thread writes it
            time.sleep(0.02)
        return status()

    assert becomes("draining") == "draining"
    time.sleep(0.3)
    assert status() == "draining"  # its job is still settling
    running[0] = False  # settled: offline at once, before the process goes
    assert becomes("offline") == "offline"
    presence._thread.join(2)
    assert not presence._thread.is_alive()
    presence.stop()  # Celery's own shutdown signal afterwards changes nothing
    assert status() == "offline"


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

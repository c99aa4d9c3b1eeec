"""POST /jobs with `resources.processes`: a 422 at that field when no live worker of the job's
queue could run that many (one GPU per process for a cuda job, its CPUs otherwise, the largest
offer being the bound), TAS_MAX_PROCESSES when no worker of the queue is live; nothing queued."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import update

from tas.settings import Settings
from tas.store import workers
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.orm import Worker, utcnow
from tests.helpers.api import RecordingPublisher
from tests.helpers.specs import iris_spec


def add_worker(
    settings: Settings,
    node: str,
    queues: list[str],
    *,
    gpus: int = 0,
    cpus: int | None = 4,
    silent_s: float = 0,
) -> None:
    devices: list[dict[str, Any]] = [{"id": "cpu", "name": "EPYC"}]
    devices += [{"id": f"cuda:{i}", "name": "H200", "memory_mb": 143771} for i in range(gpus)]
    capacity: dict[str, Any] = {"memory_mb": 64000, "gpu_memory_mb": [143771] * gpus}
    if cpus is not None:
        capacity["cpus"] = cpus
    engine = make_engine(settings.resolved_database_url)
    with make_sessionmaker(engine)() as s:
        workers.register(s, workers.WorkerInfo(node, "box", 1, queues, devices, capacity, 1))
        s.flush()
        s.execute(
            update(Worker)
            .where(Worker.id == node)
            .values(heartbeat_at=utcnow() - timedelta(seconds=silent_s))
        )
        s.commit()
    engine.dispose()


def submit(client: TestClient, processes: int, device: str) -> Any:
    return client.post(
        "/jobs", json=iris_spec(resources={"processes": processes, "device": device})
    )


def refused(client: TestClient, processes: int, device: str) -> str:
    r = submit(client, processes, device)
    assert r.status_code == 422, r.text
    [problem] = r.json()["detail"]
    assert problem["loc"] == ["body", "resources", "processes"]
    return str(problem["msg"])


def test_a_cuda_job_needs_a_live_gpu_worker_with_a_gpu_per_process(
    client: TestClient, settings: Settings, published: RecordingPublisher
) -> None:
    add_worker(settings, "w1@a", ["gpu", "default"], gpus=2, cpus=64)
    add_worker(settings, "w0@b", ["gpu"], gpus=1, cpus=64)
    add_worker(settings, "w8@c", ["gpu"], gpus=8, silent_s=600)  # lost: offers nothing now
    add_worker(settings, "cpu@d", ["default", "cpu"], cpus=64)
    message = refused(client, 4, "cuda")
    assert message == (
        "4 processes, but the largest live worker on queue 'gpu' offers 2 GPUs (worker w1@a);"
        " at most 2 (one process per GPU)"
    )
    assert published.published == []
    assert client.get("/jobs").json()["items"] == []
    assert submit(client, 2, "cuda").status_code == 201


def test_a_cpu_job_is_bounded_by_the_largest_live_workers_cpus(
    client: TestClient, settings: Settings
) -> None:
    add_worker(settings, "small@a", ["cpu"], cpus=2)
    add_worker(settings, "big@b", ["cpu", "default"], cpus=4)
    add_worker(settings, "gpu@c", ["gpu"], gpus=8, cpus=128)  # not the cpu queue's
    message = refused(client, 8, "cpu")
    assert "8 processes, but the largest live worker on queue 'cpu' offers 4 CPUs" in message
    assert "(worker big@b)" in message
    assert submit(client, 4, "cpu").status_code == 201


def test_an_auto_job_takes_a_workers_gpus_or_its_cpus(
    client: TestClient, settings: Settings
) -> None:
    """`auto` trains on a worker's GPUs when it has one per process, else on its CPUs: the
    larger of the two is what the worker offers."""
    add_worker(settings, "gpu@a", ["default"], gpus=8, cpus=2)
    assert submit(client, 8, "auto").status_code == 201
    message = refused(client, 16, "auto")
    assert "offers 8 GPUs (worker gpu@a)" in message and "queue 'default'" in message


def test_without_a_live_worker_on_the_queue_the_setting_bounds_processes(
    client: TestClient, settings: Settings
) -> None:
    """No live worker says what it offers (none live, or one that does not report its CPUs): the
    job is accepted up to TAS_MAX_PROCESSES and waits for a worker, as a cuda job without a GPU
    worker always has."""
    add_worker(settings, "quiet@a", ["cpu"], cpus=None)
    r = submit(client, 8, "cuda")
    assert r.status_code == 201, r.text
    assert r.json()["waiting_for"]["queue"] == "gpu"
    assert submit(client, 8, "cpu").status_code == 201
    message = refused(client, 16, "cuda")
    assert "16 processes is above this deployment's limit" in message
    assert "at most 8 (TAS_MAX_PROCESSES)" in message


def test_one_process_is_never_refused_for_want_of_workers(client: TestClient) -> None:
    """The default (1) needs no worker to say anything: a one-process job on a queue nobody
    consumes is accepted and waits, as before."""
    r = client.post("/jobs", json=iris_spec(resources={"device": "cuda"}))
    assert r.status_code == 201, r.text

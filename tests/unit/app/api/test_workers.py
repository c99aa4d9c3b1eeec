"""GET /workers, a queued job's `waiting_for`, and the submit response's warning when no live
worker consumes the job's queue."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import update

from app.services.job_stream import JobStreams
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store import workers
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.orm import Worker, utcnow
from tests.helpers.specs import iris_spec

CPU_WORKER = workers.WorkerInfo(
    "cpu1@box",
    "box",
    4321,
    ["default", "cpu"],
    [{"id": "cpu", "name": "EPYC"}],
    {"memory_mb": 8000, "gpu_memory_mb": [], "cpus": 4},
    2,
)
GPU_WORKER = workers.WorkerInfo(
    "gpu1@box",
    "box",
    4322,
    ["gpu"],
    [{"id": "cpu", "name": "EPYC"}, {"id": "cuda:0", "name": "NVIDIA H200", "memory_mb": 143771}],
    {"memory_mb": 8000, "gpu_memory_mb": [143771], "cpus": 4},
    1,
)


def add_worker(settings: Settings, info: workers.WorkerInfo, *, silent_s: float = 0) -> None:
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    with sessions() as s:
        workers.register(s, info)
        s.flush()
        s.execute(
            update(Worker)
            .where(Worker.id == info.id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=silent_s))
        )
        s.commit()


def test_workers_lists_what_each_offers(client: TestClient, settings: Settings) -> None:
    assert client.get("/workers").json() == []
    add_worker(settings, CPU_WORKER)
    add_worker(settings, GPU_WORKER, silent_s=60)  # killed a minute ago
    body = client.get("/workers").json()
    assert [(w["id"], w["status"], w["live"]) for w in body] == [
        ("cpu1@box", "online", True),
        ("gpu1@box", "lost", False),
    ]
    cpu = body[0]
    assert cpu["queues"] == ["default", "cpu"] and cpu["concurrency"] == 2
    assert cpu["devices"] == [{"id": "cpu", "name": "EPYC", "memory_mb": None}]
    assert cpu["capacity"] == {"memory_mb": 8000, "gpu_memory_mb": [], "cpus": 4}
    assert cpu["running_jobs"] == 0 and cpu["pid"] == 4321
    assert body[1]["devices"][1]["name"] == "NVIDIA H200"
    assert client.get("/workers?live=1").status_code == 422  # unknown parameters are not ignored


def test_a_cuda_job_with_no_gpu_worker_is_accepted_with_a_warning(
    client: TestClient, settings: Settings
) -> None:
    add_worker(settings, CPU_WORKER)
    r = client.post("/jobs", json=iris_spec(resources={"device": "cuda"}))
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["queue"] == "gpu" and job["status"] == "queued"
    assert len(job["warnings"]) == 1
    assert "no live worker consumes queue 'gpu'" in job["warnings"][0]
    assert "cpu1@box consumes default, cpu" in job["warnings"][0]
    assert r.headers["warning"].startswith('199 tas "no live worker consumes queue')
    assert job["waiting_for"]["queue"] == "gpu"

    again = client.get(f"/jobs/{job['id']}").json()
    assert again["waiting_for"] == job["waiting_for"] and "warnings" not in again
    listed = client.get("/jobs").json()["items"]
    assert listed[0]["waiting_for"]["queue"] == "gpu"

    # a GPU worker comes up: the job no longer waits for one (it waits its turn)
    add_worker(settings, GPU_WORKER)
    assert client.get(f"/jobs/{job['id']}").json()["waiting_for"] is None


def test_a_servable_job_has_no_warning(client: TestClient, settings: Settings) -> None:
    add_worker(settings, CPU_WORKER)
    r = client.post("/jobs", json=iris_spec(resources={"device": "cpu"}))
    assert r.status_code == 201 and r.json()["warnings"] == [] and r.json()["waiting_for"] is None
    assert "warning" not in r.headers


def test_with_no_live_worker_every_queued_job_says_so(
    client: TestClient, settings: Settings
) -> None:
    add_worker(settings, CPU_WORKER, silent_s=16)  # three 5 s beats missed
    job = client.post("/jobs", json=iris_spec()).json()
    assert "no worker is live" in job["waiting_for"]["reason"]
    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 200
    assert client.get(f"/jobs/{job['id']}").json()["waiting_for"] is None


def test_an_event_stream_shows_waiting_for_and_its_end(settings: Settings) -> None:
    """The live stream says what GET /jobs/{id} says, and tells when a worker for it comes up."""
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    with sessions() as s:
        job_id = job_store.create_job(
            s, {"name": "g", "resources": {"device": "cuda"}}, tenant="default", max_attempts=3
        ).id
        s.commit()

    async def run() -> None:
        hub = JobStreams(sessions, max_streams=4, interval_s=0.05, worker_heartbeat_s=0.2)
        watch = await hub.watch(job_id, "default")
        events = watch.events().__aiter__()
        first = json.loads((await asyncio.wait_for(events.__anext__(), 5))["data"])
        assert first["waiting_for"]["queue"] == "gpu"
        add_worker(settings, GPU_WORKER)
        second = json.loads((await asyncio.wait_for(events.__anext__(), 5))["data"])
        assert second["waiting_for"] is None and second["status"] == "queued"
        watch.close()
        await hub.aclose()

    asyncio.run(run())


def test_clone_and_resume_warn_too(client: TestClient, settings: Settings) -> None:
    add_worker(settings, CPU_WORKER)
    job = client.post("/jobs", json=iris_spec(resources={"device": "cpu"})).json()
    clone = client.post(f"/jobs/{job['id']}/clone", json={"resources": {"device": "cuda"}})
    assert clone.status_code == 201, clone.text
    assert "queue 'gpu'" in clone.json()["warnings"][0] and "warning" in clone.headers
    assert client.post(f"/jobs/{clone.json()['id']}/cancel").status_code == 200
    resumed = client.post(f"/jobs/{clone.json()['id']}/resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["waiting_for"]["queue"] == "gpu" and resumed.json()["warnings"]


def test_a_non_ascii_worker_name_still_gives_a_201(client: TestClient, settings: Settings) -> None:
    add_worker(settings, workers.WorkerInfo("w@東京", "東京", 1, ["cpu"], [], {}, 1))
    r = client.post("/jobs", json=iris_spec(resources={"device": "cuda"}))
    assert r.status_code == 201, r.text
    assert "w@東京" in r.json()["warnings"][0]  # the body keeps the name as it is
    assert "w@??" in r.headers["warning"]

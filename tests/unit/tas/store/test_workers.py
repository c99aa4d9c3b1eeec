"""The `workers` table: liveness from the heartbeat and the stored status, a restart taking its
row over, and which queued jobs no live worker can run."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from tas.store import jobs as job_store
from tas.store import leases as lease_store
from tas.store import workers
from tas.store.orm import Job, Worker, utcnow
from tests.helpers.store import migrated_sessions, worker_info


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    return migrated_sessions(tmp_path)


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
        workers.register(s, worker_info("a@h", ["default", "cpu"]))
        workers.register(s, worker_info("b@h", ["cpu"]))
        workers.register(s, worker_info("c@h", ["default"]))
        s.commit()
    age(sessions, "b@h", 16)  # three 5 s beats missed: lost
    with sessions() as s:
        workers.beat(s, worker_info("c@h", ["default"]), workers.DRAINING)
        s.commit()
        assert [w.id for w in workers.live(s, heartbeat_s=5)] == ["a@h"]
        states = {w.id: st for w, st in workers.listed(s, heartbeat_s=5, forget_s=3600)}
    assert states == {"a@h": "online", "b@h": "lost", "c@h": "draining"}
    with sessions() as s:
        workers.beat(s, worker_info("a@h", ["default", "cpu"]), workers.OFFLINE)
        s.commit()
        states = {w.id: st for w, st in workers.listed(s, heartbeat_s=5, forget_s=3600)}
        assert states["a@h"] == "offline" and workers.live(s, heartbeat_s=5) == []


def test_a_restart_under_the_same_node_name_takes_the_row_over(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as s:
        first = workers.register(s, worker_info("a@h", ["cpu"], pid=1)).started_at
        s.commit()
    with sessions() as s:
        workers.beat(s, worker_info("a@h", ["default"], pid=2), workers.ONLINE)
        s.commit()
        row = s.get(Worker, "a@h")
        assert row is not None and row.pid == 2 and row.queues == ["default"]
        assert row.started_at > first


def test_old_rows_are_forgotten(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        workers.register(s, worker_info("old@h", ["cpu"]))
        workers.register(s, worker_info("new@h", ["cpu"]))
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

        workers.register(s, worker_info("cpu@h", ["default", "cpu"]))
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
            job_store.create_job(s, {"name": f"j{i}"}, tenant=tenant, max_attempts=3).id
            for i, tenant in enumerate(["default", "default", "default", "team-b"])
        ]
        s.commit()
    owners = ["w1@h/10/aa", "w1@h/11/bb", "w2@h/12/cc", "w1@h/13/dd"]
    for job_id, owner in zip(ids, owners, strict=True):
        with sessions() as s:
            assert lease_store.claim(s, job_id, owner, 30) is not None
            s.commit()
    with sessions() as s:
        assert workers.running_by_worker(s, tenant=None) == {"w1@h": 3, "w2@h": 1}
        assert workers.running_by_worker(s, tenant="default") == {"w1@h": 2, "w2@h": 1}
        assert workers.running_by_worker(s, tenant="team-b") == {"w1@h": 1}
        assert workers.running_by_worker(s, tenant="team-c") == {}
        s.execute(update(Job).where(Job.id == ids[0]).values(status="succeeded"))
        assert workers.running_by_worker(s, tenant="default") == {"w1@h": 1, "w2@h": 1}

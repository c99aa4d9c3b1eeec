"""The shared store on a real SQLite file: a migrated database per test, the rows the store tests
start from (a queued job, a claimed run with open stages, an expired lease, a worker), and a broker
that records what the reaper sends."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from tas.store import jobs as job_store
from tas.store import leases as lease_store
from tas.store import workers
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.migrate import upgrade
from tas.store.orm import Job, JobStage, utcnow

CPU: list[dict[str, Any]] = [{"id": "cpu", "name": "x86"}]
"""The devices of a machine with no accelerator, as the worker reports them."""


def migrated_sessions(tmp_path: Path) -> sessionmaker[Session]:
    """Sessions on `tmp_path/tas.db`, migrated to the head revision."""
    url = f"sqlite:///{tmp_path / 'tas.db'}"
    upgrade(url)
    return make_sessionmaker(make_engine(url))


def worker_info(node: str, queues: list[str], pid: int = 100) -> workers.WorkerInfo:
    """A CPU-only worker on `node` that consumes `queues`."""
    return workers.WorkerInfo(node, "host", pid, queues, CPU, {"cpus": 2}, 1)


JOB_SPEC = {"name": "j", "dataset": {"name": "iris"}, "resources": {"device": "auto"}}


def new_job(sessions: sessionmaker[Session], max_attempts: int = 3) -> str:
    """A queued job on iris; its id."""
    with sessions() as s:
        job = job_store.create_job(s, JOB_SPEC, tenant="default", max_attempts=max_attempts)
        s.commit()
        return job.id


def expire_lease(sessions: sessionmaker[Session], job_id: str) -> None:
    """The job's lease ran out a second ago, as when its worker stopped beating."""
    with sessions() as s:
        s.execute(
            update(Job).where(Job.id == job_id).values(lease_until=utcnow() - timedelta(seconds=1))
        )
        s.commit()


def claim_into(
    sessions: sessionmaker[Session], job_id: str, owner: str, *names: str
) -> lease_store.Lease:
    """Claim and open stages (the last one stays running), as a worker would."""
    with sessions() as s:
        lease = lease_store.claim(s, job_id, owner, 30)
        assert lease is not None
        for name in names:
            lease_store.renew(s, lease, 30, {"stage": name})
            lease_store.start_stage(s, lease, name)
        for name in names[:-1]:
            lease_store.finish_stage(s, lease, name, {})
        s.commit()
    return lease


def stages(sessions: sessionmaker[Session], job_id: str) -> dict[tuple[int, str], str]:
    """Each stage's status by (attempt, name)."""
    with sessions() as s:
        return {
            (st.attempt, st.name): st.status
            for st in s.scalars(select(JobStage).where(JobStage.job_id == job_id))
        }


def load_job(sessions: sessionmaker[Session], job_id: str) -> Job:
    """The job's row as stored now."""
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


class RecordingBroker:
    """The broker as the reaper sees it: what was published, and how many messages wait."""

    def __init__(self, sizes: dict[str, int] | None = None) -> None:
        self.published: list[str] = []
        self.resumed: list[str] = []
        self.sizes = sizes or {}

    def publish(self, job_id: str, queue: str, *, resumed: bool = False) -> bool:
        self.published.append(job_id)
        if resumed:
            self.resumed.append(job_id)
        return True

    def queue_sizes(self, queues: list[str]) -> dict[str, int] | None:
        return {q: self.sizes.get(q, 0) for q in queues}

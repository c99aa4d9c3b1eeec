"""A tenant's job admissions under concurrency: requests racing at the limit of queued + running
jobs admit exactly up to it, on SQLite (writers serialised by BEGIN IMMEDIATE) and on PostgreSQL
(READ COMMITTED, where only the per-tenant advisory lock keeps the count true)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.migrate import upgrade
from tests.helpers.api import migrated_settings

LIMIT = 3
RACERS = 8
SPEC = {"name": "t", "dataset": {"name": "iris"}}


def admit(sessions: sessionmaker[Session], tenant: str, barrier: threading.Barrier) -> bool:
    """What `app.services.quotas.admit_job` and the submit after it do, with a pause between the
    count and the insert that gives a racing request every chance to count the same number."""
    with sessions() as s:
        barrier.wait()
        job_store.lock_admissions(s, tenant)
        if job_store.active_jobs(s, tenant) >= LIMIT:
            return False
        time.sleep(0.05)
        job_store.create_job(s, dict(SPEC), tenant=tenant, max_attempts=1)
        s.commit()
        return True


def race(sessions: sessionmaker[Session], tenant: str) -> list[bool]:
    barrier = threading.Barrier(RACERS)
    results: list[bool] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(admit(sessions, tenant, barrier))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return results


def check(sessions: sessionmaker[Session]) -> None:
    assert sum(race(sessions, "team-a")) == LIMIT
    with sessions() as s:
        assert job_store.active_jobs(s, "team-a") == LIMIT
    # Another tenant's admissions neither wait on nor count the first one's.
    assert sum(race(sessions, "team-b")) == LIMIT


def test_racing_admissions_stop_at_the_limit_on_sqlite(tmp_path: Path) -> None:
    settings: Settings = migrated_settings(tmp_path)
    engine = make_engine(settings.resolved_database_url)
    try:
        check(make_sessionmaker(engine))
    finally:
        engine.dispose()


@pytest.mark.timeout(120)
def test_racing_admissions_stop_at_the_limit_on_postgresql(postgres_url: str) -> None:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    try:
        check(make_sessionmaker(engine))
    finally:
        engine.dispose()

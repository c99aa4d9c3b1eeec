"""KeptReaders: read-only connections kept open between requests (SQLite), each use a fresh
read-only transaction; and `job_view`, the job read as plain values on one of them."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text, update
from sqlalchemy.exc import OperationalError

from tas.errors import JobNotFound
from tas.store import jobs as job_store
from tas.store.engine import KeptReaders, make_engine, make_sessionmaker
from tas.store.migrate import upgrade
from tas.store.orm import Job, JobStage
from tests.helpers.api import migrated_settings

SPEC = {"name": "t", "dataset": {"name": "iris"}}


@pytest.fixture
def url(tmp_path: Path) -> str:
    return migrated_settings(tmp_path).resolved_database_url


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    e = make_engine(url)
    yield e
    e.dispose()


def add_job(engine: Engine, tenant: str = "default", stages: int = 3) -> str:
    with make_sessionmaker(engine)() as s:
        job = job_store.create_job(s, dict(SPEC), tenant=tenant, max_attempts=1)
        for n, name in enumerate(("collect", "preprocess", "train")[:stages]):
            s.add(JobStage(job_id=job.id, attempt=1, name=name, status=f"s{n}"))
        s.commit()
        return job.id


def dbapi(conn: object) -> object:
    return conn.connection.dbapi_connection  # type: ignore[attr-defined]


def test_a_connection_is_reused_and_each_use_sees_the_latest_commit(
    url: str, engine: Engine
) -> None:
    job_id = add_job(engine)
    kept = KeptReaders(url, engine, keep=2)
    try:
        with kept.transaction() as conn:
            first = dbapi(conn)
            assert job_store.job_view(conn, job_id, tenant="default")["status"] == "queued"
        with make_sessionmaker(engine)() as s:
            s.execute(update(Job).where(Job.id == job_id).values(status="running"))
            s.commit()
        with kept.transaction() as conn:
            assert dbapi(conn) is first, "kept open between uses"
            assert job_store.job_view(conn, job_id, tenant="default")["status"] == "running"
        assert engine.pool.checkedout() == 0, "the shared pool lends none of them"  # type: ignore[attr-defined]
    finally:
        kept.close()


def test_a_use_is_rolled_back(url: str, engine: Engine) -> None:
    job_id = add_job(engine)
    kept = KeptReaders(url, engine, keep=1)
    try:
        with kept.transaction() as conn:
            conn.execute(update(Job).where(Job.id == job_id).values(name="changed"))
        with kept.transaction() as conn:
            assert job_store.job_view(conn, job_id, tenant="default")["name"] == "t"
    finally:
        kept.close()


def test_a_failed_connection_is_dropped_and_a_404_keeps_it(url: str, engine: Engine) -> None:
    kept = KeptReaders(url, engine, keep=1)
    try:
        with pytest.raises(JobNotFound), kept.transaction() as first:
            job_store.job_view(first, "0" * 32, tenant="default")
        with pytest.raises(OperationalError), kept.transaction() as conn:
            conn.execute(text("SELECT * FROM no_such_table"))
        assert conn is first
        assert first.closed, "returned to its pool, which resets or discards it"
        with kept.transaction() as conn:
            assert conn is not first
    finally:
        kept.close()


def test_at_most_keep_are_kept_and_close_closes_them(url: str, engine: Engine) -> None:
    kept = KeptReaders(url, engine, keep=2)
    with kept.transaction() as a, kept.transaction() as b, kept.transaction() as c:
        opened = [a, b, c]
        assert len({id(dbapi(x)) for x in opened}) == 3
    assert sum(not x.closed for x in opened) == 2
    with kept.transaction() as late:
        kept.close()
    assert all(x.closed for x in opened) and late.closed, "one in use closes as it comes back"


def test_job_view_is_the_tenants_job_with_its_stages_in_order(url: str, engine: Engine) -> None:
    job_id = add_job(engine, tenant="team-a")
    kept = KeptReaders(url, engine, keep=1)
    try:
        with kept.transaction() as conn:
            view = job_store.job_view(conn, job_id, tenant="team-a")
            with pytest.raises(JobNotFound):
                job_store.job_view(conn, job_id, tenant="team-b")
    finally:
        kept.close()
    with make_sessionmaker(engine)() as s:
        job = job_store.get_job(s, job_id, tenant="team-a")
        assert [st["name"] for st in view["stages"]] == [st.name for st in job.stages]
        assert view["spec"] == job.spec and view["created_at"] == job.created_at
        assert view["created_at"].tzinfo is not None


def test_postgresql_keeps_none_and_uses_the_shared_pool(postgres_url: str) -> None:
    """A PostgreSQL connection can go stale (a server restart): every use checks one out of
    the shared pool, which pings it."""
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    try:
        job_id = add_job(engine)
        kept = KeptReaders(postgres_url, engine, keep=4)
        with kept.transaction() as conn:
            assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
            assert job_store.job_view(conn, job_id, tenant="default")["id"] == job_id
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        kept.close()
    finally:
        engine.dispose()


@contextlib.contextmanager
def file_held_exclusively(url: str) -> Iterator[Callable[[], None]]:
    """Another connection holding the database file exclusively (the one case in WAL mode
    where a reader must wait); yields a function that lets it go."""
    holder = sqlite3.connect(
        url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
    )
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("CREATE TABLE IF NOT EXISTS held (x)")

    try:
        yield holder.close  # closing the connection drops its lock
    finally:
        holder.close()


def test_an_inline_reader_gives_up_at_once_on_a_held_file_and_a_patient_one_waits(
    url: str, engine: Engine
) -> None:
    """The kept readers run on the API's event loop: a locked file must not stall it for the
    30 s busy timeout of every other connection, and the retry (`patient`, on a thread) must
    still get the row once the file is free."""
    job_id = add_job(engine)
    kept = KeptReaders(url, engine, keep=1)
    assert kept.inline
    engine.dispose()  # an exclusive hold needs every other connection to the file closed
    try:
        with file_held_exclusively(url) as release:
            t0 = time.monotonic()
            with pytest.raises(OperationalError), kept.transaction() as conn:
                job_store.job_view(conn, job_id, tenant="default")
            assert time.monotonic() - t0 < 1.0
            timer = threading.Timer(0.5, release)
            timer.start()
            t0 = time.monotonic()
            with kept.patient() as conn:
                assert job_store.job_view(conn, job_id, tenant="default")["id"] == job_id
            waited = time.monotonic() - t0
            timer.join()
        assert waited >= 0.3, "the patient read waited for the file"
        with kept.transaction() as conn:  # the inline reader works again once the file is free
            assert job_store.job_view(conn, job_id, tenant="default")["id"] == job_id
    finally:
        kept.close()

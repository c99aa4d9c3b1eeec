"""Every `GET /jobs?sort=` order on both databases: the rows come in the order the sort
promises (ties broken newest first, then by id), and paging through it with any page size serves
every row exactly once, page boundaries falling inside runs of tied keys and NULL durations."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from tas.errors import InvalidInput
from tas.store import jobs as job_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.migrate import upgrade
from tas.store.orm import Job
from tests.helpers.api import migrated_settings

SPEC = {"name": "j", "dataset": {"name": "iris"}}
T0 = datetime(2026, 1, 1, tzinfo=UTC)
RANK = {s.value: i for i, s in enumerate(job_store.STATUS_ORDER)}


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        url = migrated_settings(tmp_path).resolved_database_url
    else:
        url = request.getfixturevalue("postgres_url")
        upgrade(url)
    engine = make_engine(url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


# (name, status, created offset in s, run seconds or None): ties on every key, NULL durations
# (queued, running, cancelled before it started), sub-second durations.
ROWS: list[tuple[str, str, int, float | None]] = [
    ("beta", "succeeded", 0, 30.0),
    ("alpha", "succeeded", 0, 30.0),
    ("alpha", "failed", 0, 2.5),
    ("gamma", "running", 10, None),
    ("beta", "queued", 10, None),
    ("alpha", "cancelled", 20, None),
    ("delta", "succeeded", 20, 30.0),
    ("beta", "failed", 20, 0.25),
    ("gamma", "cancelled", 30, 7.0),
    ("alpha", "succeeded", 30, 120.0),
    ("Alpha", "queued", 30, None),
]


def seed(sessions: sessionmaker[Session]) -> tuple[str, list[dict[str, Any]]]:
    """The jobs of ROWS under a fresh tenant (PostgreSQL's database is shared by the module)."""
    tenant = uuid.uuid4().hex
    made: list[dict[str, Any]] = []
    with sessions() as s:
        job_store.create_job(s, dict(SPEC), tenant="other", max_attempts=1)  # never listed
        for name, status, offset, ran in ROWS:
            job = job_store.create_job(s, {**SPEC, "name": name}, tenant=tenant, max_attempts=1)
            created = T0 + timedelta(seconds=offset)
            started = created + timedelta(seconds=1) if status != "queued" else None
            finished = started + timedelta(seconds=ran) if started and ran is not None else None
            values = {"name": name, "status": status, "created_at": created}
            values |= {"started_at": started, "finished_at": finished}
            s.execute(update(Job).where(Job.id == job.id).values(**values))
            made.append({"id": job.id, **values, "duration": ran})
        s.commit()
    return tenant, made


def newest(j: dict[str, Any]) -> tuple[float, str]:
    return (-j["created_at"].timestamp(), "".join(chr(0x10FFFF - ord(c)) for c in j["id"]))


#: The order each sort promises, written out in Python: sorted() on these keys.
EXPECTED: dict[str, Callable[[dict[str, Any]], Any]] = {
    "created_at": lambda j: (j["created_at"], j["id"]),
    "-created_at": newest,
    "name": lambda j: (j["name"], *newest(j)),
    "-name": lambda j: ([-ord(c) for c in j["name"]] + [1], *newest(j)),
    "status": lambda j: (RANK[j["status"]], *newest(j)),
    "-status": lambda j: (-RANK[j["status"]], *newest(j)),
    "duration": lambda j: (j["duration"] is None, j["duration"] or 0, *newest(j)),
    "-duration": lambda j: (j["duration"] is None, -(j["duration"] or 0), *newest(j)),
}


def test_every_sort_is_offered_and_tested() -> None:
    assert set(EXPECTED) == set(job_store.JOB_ORDERS)


@pytest.mark.parametrize("sort", list(EXPECTED))
def test_each_order_pages_every_row_once(sessions: sessionmaker[Session], sort: str) -> None:
    tenant, made = seed(sessions)
    expected = [j["id"] for j in sorted(made, key=EXPECTED[sort])]
    for limit in (1, 2, 4, 50):
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        with sessions() as s:
            while True:
                page = job_store.list_jobs(s, tenant=tenant, limit=limit, cursor=cursor, sort=sort)
                pages += 1
                assert len(page.items) <= limit
                seen += [j.id for j in page.items]
                cursor = page.next_cursor
                if cursor is None:
                    break
        assert seen == expected, limit
        assert pages == -(-len(made) // limit), limit  # a full last page carries no cursor


def test_filters_apply_before_the_order(sessions: sessionmaker[Session]) -> None:
    tenant, made = seed(sessions)
    want = [j for j in made if j["name"].startswith("al") and j["status"] != "queued"]
    expected = [j["id"] for j in sorted(want, key=EXPECTED["-duration"])]
    f = job_store.JobFilter(name_prefix="al", statuses=("succeeded", "failed", "cancelled"))
    seen, cursor = [], None
    with sessions() as s:
        while True:
            page = job_store.list_jobs(
                s, tenant=tenant, limit=1, cursor=cursor, filters=f, sort="-duration"
            )
            seen += [j.id for j in page.items]
            if (cursor := page.next_cursor) is None:
                break
    assert seen == expected


def test_a_cursor_pages_only_the_sort_that_issued_it(sessions: sessionmaker[Session]) -> None:
    tenant, _ = seed(sessions)
    with sessions() as s:
        by_name = job_store.list_jobs(s, tenant=tenant, limit=2, cursor=None, sort="name")
        newest_first = job_store.list_jobs(s, tenant=tenant, limit=2, cursor=None)
        assert by_name.next_cursor and newest_first.next_cursor
        for cursor, sort in [
            (by_name.next_cursor, "-name"),
            (by_name.next_cursor, "-created_at"),
            (newest_first.next_cursor, "name"),
            ("bm8tYmFy", "status"),
        ]:
            with pytest.raises(InvalidInput) as raised:
                job_store.list_jobs(s, tenant=tenant, limit=2, cursor=cursor, sort=sort)
            assert raised.value.problems[0][0] == ("query", "cursor")
        with pytest.raises(InvalidInput, match="sort=name, not sort=-name"):
            job_store.list_jobs(s, tenant=tenant, limit=2, cursor=by_name.next_cursor, sort="-name")

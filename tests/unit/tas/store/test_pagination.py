"""The one keyset pagination every list uses: clients hold cursors, so their format is pinned, and
rows created in the same instant are neither skipped nor repeated across pages."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from tas.errors import InvalidInput
from tas.store import jobs as job_store
from tas.store import pagination
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.migrate import upgrade
from tas.store.orm import Job

SPEC = {"name": "j", "dataset": {"name": "iris"}, "resources": {"device": "auto"}}


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    url = f"sqlite:///{tmp_path / 'tas.db'}"
    upgrade(url)
    return make_sessionmaker(make_engine(url))


def test_the_cursor_format_is_the_one_clients_hold() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    cursor = pagination.encode_cursor(when, "abc")
    raw = b"2026-01-02T03:04:05.678000+00:00|abc"
    assert cursor == base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert pagination.decode_cursor(cursor) == (when, "abc")


@pytest.mark.parametrize("cursor", ["!!", "bm8tYmFy", ""])
def test_a_cursor_this_server_did_not_issue_is_invalid_input(cursor: str) -> None:
    with pytest.raises(InvalidInput):
        pagination.decode_cursor(cursor)


def test_pages_cover_every_row_once_in_order_ties_included(
    sessions: sessionmaker[Session],
) -> None:
    same = datetime(2026, 1, 1, tzinfo=UTC)
    with sessions() as s:
        ids = [job_store.create_job(s, SPEC, tenant="t", max_attempts=1).id for _ in range(7)]
        job_store.create_job(s, SPEC, tenant="other", max_attempts=1)
        # Four rows share one created_at: only the id orders them, and a page boundary falls
        # among them.
        s.execute(update(Job).where(Job.id.in_(ids[:4])).values(created_at=same))
        s.commit()

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    with sessions() as s:
        expected = list(
            s.scalars(
                select(Job.id)
                .where(Job.tenant == "t")
                .order_by(Job.created_at.desc(), Job.id.desc())
            )
        )
        while True:
            page = pagination.paginate(
                s,
                select(Job).where(Job.tenant == "t"),
                created_col=Job.created_at,
                id_col=Job.id,
                limit=3,
                cursor=cursor,
            )
            pages += 1
            seen += [job.id for job in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
    assert seen == expected and sorted(seen) == sorted(ids)
    assert pages == 3


def test_a_full_last_page_carries_no_cursor(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        for _ in range(2):
            job_store.create_job(s, SPEC, tenant="t", max_attempts=1)
        s.commit()
        page = job_store.list_jobs(s, tenant="t", limit=2, cursor=None)
    assert len(page.items) == 2 and page.next_cursor is None

"""A lookup by id filters by the caller's tenant in its own statement: another tenant's row is
never read into the caller's session (not even to be compared and dropped), so no code after the
fetch can leak or act on it, and the answer is the one an unknown id gets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from tas.errors import DatasetNotFound, JobNotFound, ModelNotFound
from tas.settings import Settings
from tas.store import datasets as dataset_store
from tas.store import jobs as job_store
from tas.store import registry as registry_store
from tas.store import searches as search_store
from tas.store.orm import Dataset, Job, Search
from tas.store.searches import SearchNotFound
from tests.helpers.api import migrated_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(tmp_path)


@pytest.fixture
def owned(sessions: sessionmaker[Session]) -> dict[str, str]:
    """A job, a dataset row and a search of tenant team-a."""
    with sessions() as s:
        job = job_store.create_job(s, {"name": "j"}, tenant="team-a", max_attempts=1)
        ds = Dataset(
            tenant="team-a",
            name="d",
            format="csv",
            sha256="0" * 64,
            fingerprint="0" * 64,
            size_bytes=1,
            path="d.csv",
            schema={},
        )
        s.add(ds)
        search = search_store.create_search(
            s,
            tenant="team-a",
            name="s",
            spec={},
            space={},
            objective={},
            sampler={},
            pruner={},
            max_trials=1,
            max_concurrent=1,
            study_name="x",
            seed=0,
        )
        s.commit()
        return {"job": job.id, "dataset": ds.id, "search": search.id}


@contextmanager
def statements(s: Session) -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, sql: str, params: Any, *_: Any) -> None:
        seen.append((sql, params))

    engine = s.get_bind()
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


LOOKUPS: dict[str, tuple[str, type[Exception], Callable[[Session, str], object]]] = {
    "get_job": ("job", JobNotFound, lambda s, i: job_store.get_job(s, i, tenant="team-b")),
    "job_view": (
        "job",
        JobNotFound,
        lambda s, i: job_store.job_view(s.connection(), i, tenant="team-b"),
    ),
    "get_dataset": (
        "dataset",
        DatasetNotFound,
        lambda s, i: dataset_store.get_dataset(s, i, tenant="team-b"),
    ),
    "get_search": (
        "search",
        SearchNotFound,
        lambda s, i: search_store.get_search(s, i, tenant="team-b"),
    ),
    "resolve_model by job id": (
        "job",
        ModelNotFound,
        lambda s, i: registry_store.resolve_model(s, i, tenant="team-b"),
    ),
}


@pytest.mark.parametrize("name", list(LOOKUPS))
def test_another_tenant_s_row_is_filtered_out_by_the_statement(
    name: str, sessions: sessionmaker[Session], owned: dict[str, str]
) -> None:
    kind, not_found, lookup = LOOKUPS[name]
    with sessions() as s, statements(s) as seen:
        with pytest.raises(not_found):
            lookup(s, owned[kind])
        # the tenant is a parameter of the statement that looked the id up ...
        assert any(
            owned[kind] in str(params) and "team-b" in str(params) and "tenant" in sql
            for sql, params in seen
        ), seen
        # ... so team-a's row never reached this session
        assert not [o for o in s.identity_map.values() if isinstance(o, Job | Dataset | Search)]


def test_the_owner_and_the_worker_still_find_it(
    sessions: sessionmaker[Session], owned: dict[str, str]
) -> None:
    with sessions() as s:
        assert job_store.get_job(s, owned["job"], tenant="team-a").id == owned["job"]
        assert job_store.job_view(s.connection(), owned["job"], tenant="team-a")["name"] == "j"
        assert dataset_store.get_dataset(s, owned["dataset"], tenant="team-a").name == "d"
        assert search_store.get_search(s, owned["search"], tenant="team-a").name == "s"
        # the worker and the search controller act on every tenant's rows, and say so
        assert job_store.get_job(s, owned["job"], tenant=None).tenant == "team-a"
        assert search_store.get_search(s, owned["search"], tenant=None).tenant == "team-a"

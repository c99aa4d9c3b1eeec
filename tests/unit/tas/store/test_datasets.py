"""The dataset store: identical uploads racing store one row and one file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tas.settings import Settings
from tas.store.engine import make_engine, make_sessionmaker
from tests.helpers.uploads import leftovers, small_upload_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Small upload limits, so the limit tests stay small."""
    return small_upload_settings(tmp_path)


def test_identical_uploads_racing_give_one_dataset(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight threads store the same bytes at once: one row, one file, no error, no temp file. Then
    the lost-race branch on purpose: the check finds nothing, the INSERT hits the unique key."""
    import threading

    from tas.store import datasets as dataset_store
    from tas.store import files as file_store

    engine = make_engine(settings.resolved_database_url)
    sessions = make_sessionmaker(engine)
    schema = {"format": "csv", "options": {"target": "y"}}

    def spool() -> file_store.Spool:
        sp = file_store.Spool(file_store.tmp_dir(settings), 1 << 20)
        sp.write(b"x,y\n1,2\n3,4\n")
        sp.finish()
        return sp

    barrier = threading.Barrier(8)
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def store() -> None:
        try:
            with spool() as sp, sessions() as s:
                barrier.wait()
                row, created = dataset_store.add_dataset(
                    s,
                    settings,
                    tenant="default",
                    name="r",
                    file_name="r.csv",
                    spool=sp,
                    schema=schema,
                )
                s.commit()
                results.append((row.id, created))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=store) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({i for i, _ in results}) == 1 and sum(c for _, c in results) == 1
    stored = list((settings.resolved_uploads_dir / "datasets").rglob("*.csv"))
    assert len(stored) == 1 and stored[0].read_bytes() == b"x,y\n1,2\n3,4\n"

    real = dataset_store._by_fingerprint
    calls: list[str] = []

    def blind(session: Any, tenant: str, fp: str) -> Any:
        calls.append(fp)
        return None if len(calls) == 1 else real(session, tenant, fp)

    monkeypatch.setattr(dataset_store, "_by_fingerprint", blind)
    with spool() as sp, sessions() as s:
        row, created = dataset_store.add_dataset(
            s, settings, tenant="default", name="r", file_name="r.csv", spool=sp, schema=schema
        )
        s.commit()
    assert not created and row.id == results[0][0] and len(calls) == 2
    assert leftovers(settings) == []
    engine.dispose()

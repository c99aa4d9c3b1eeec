"""The unit of work: one commit or none, the effects that wait for it, and a lost unique-key race
that undoes only its own INSERT (a SAVEPOINT, which SQLite honours through make_engine's BEGIN)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tas.settings import Settings
from tas.store import datasets as dataset_store
from tas.store import files as file_store
from tas.store.migrate import upgrade
from tas.store.orm import Dataset, WeightsFile
from tas.store.unit_of_work import after_commit, insert_or_get, unit_of_work


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path / "var")
    s.ensure_dirs()
    upgrade(s.resolved_database_url)
    return s


def weights(sha: str, name: str = "w") -> WeightsFile:
    return WeightsFile(tenant="default", sha256=sha * 64, name=name, size_bytes=1, tensors={})


def count(sessions: sessionmaker[Session], model: type[WeightsFile] | type[Dataset]) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_actions_run_after_the_commit_in_order(sessions: sessionmaker[Session]) -> None:
    seen: list[tuple[str, int]] = []

    def note(label: str) -> None:
        # another session sees the row: the action runs once the commit is done
        seen.append((label, count(sessions, WeightsFile)))

    with unit_of_work(sessions) as s:
        s.add(weights("a"))
        after_commit(s, note, "first")
        after_commit(s, note, label="second")
        s.flush()
        assert seen == []
    assert seen == [("first", 1), ("second", 1)]


def in_unit(sessions: sessionmaker[Session], body: Callable[[Session], None]) -> None:
    with unit_of_work(sessions) as s:
        body(s)


def test_nothing_runs_and_nothing_stays_on_a_rollback(sessions: sessionmaker[Session]) -> None:
    ran: list[str] = []

    def body(s: Session) -> None:
        s.add(weights("a"))
        s.flush()
        after_commit(s, ran.append, "published")
        raise RuntimeError("a later step failed")

    with pytest.raises(RuntimeError, match="later step"):
        in_unit(sessions, body)
    assert ran == [] and count(sessions, WeightsFile) == 0


def test_nothing_runs_when_the_commit_fails(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        s.add(weights("a"))
        s.commit()
    ran: list[str] = []

    def body(s: Session) -> None:
        s.add(weights("a", name="duplicate"))  # flushed, and refused, at the commit
        after_commit(s, ran.append, "published")

    with pytest.raises(IntegrityError):
        in_unit(sessions, body)
    assert ran == [] and count(sessions, WeightsFile) == 1


def test_every_action_runs_and_the_first_error_is_raised(sessions: sessionmaker[Session]) -> None:
    ran: list[str] = []

    def fail(label: str) -> None:
        ran.append(label)
        raise ValueError(label)

    def body(s: Session) -> None:
        s.add(weights("a"))
        after_commit(s, fail, "one")
        after_commit(s, fail, "two")
        after_commit(s, ran.append, "three")

    with pytest.raises(ValueError, match="one"):
        in_unit(sessions, body)
    assert ran == ["one", "two", "three"] and count(sessions, WeightsFile) == 1


def test_after_commit_needs_a_unit_of_work(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, pytest.raises(RuntimeError, match="unit_of_work"):
        after_commit(s, print, "never")


def test_a_released_savepoint_is_undone_with_its_transaction(
    sessions: sessionmaker[Session],
) -> None:
    """SQLite's own driver would let the SAVEPOINT (the transaction's first statement) open a
    transaction of its own, committed by its RELEASE: the outer rollback would keep the row."""
    with sessions() as s:
        with s.begin_nested():
            s.add(weights("a"))
        s.rollback()
    assert count(sessions, WeightsFile) == 0


def test_insert_or_get_keeps_the_callers_earlier_work(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        s.add(weights("a", name="winner"))
        s.commit()
    with unit_of_work(sessions) as s:
        s.add(weights("b", name="earlier work"))
        s.flush()

        def winner() -> WeightsFile | None:
            return s.scalar(select(WeightsFile).where(WeightsFile.sha256 == "a" * 64))

        row, created = insert_or_get(s, weights("a", name="loser"), winner)
        assert not created and row.name == "winner"
    with sessions() as s:
        names = sorted(s.scalars(select(WeightsFile.name)))
    assert names == ["earlier work", "winner"]


def test_insert_or_get_raises_a_conflict_it_cannot_explain(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as s:
        s.add(weights("a"))
        s.commit()
    with unit_of_work(sessions) as s, pytest.raises(IntegrityError):
        insert_or_get(s, weights("a"), lambda: None)


def test_a_lost_upload_race_keeps_the_callers_earlier_work(
    settings: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """add_dataset's loser of two identical uploads (it looked before the winner's row was
    there): its INSERT is undone by the SAVEPOINT alone, the winner's row is returned, and what
    its transaction did before (another row here) is committed with it."""
    schema = {"format": "csv", "options": {"target": "y"}}

    def spool() -> file_store.Spool:
        sp = file_store.Spool(file_store.tmp_dir(settings), 1 << 20)
        sp.write(b"x,y\n1,2\n")
        sp.finish()
        return sp

    def add(s: Session, sp: file_store.Spool) -> tuple[Dataset, bool]:
        return dataset_store.add_dataset(
            s, settings, tenant="default", name="r", file_name="r.csv", spool=sp, schema=schema
        )

    with spool() as sp, unit_of_work(sessions) as s:
        winner, created = add(s, sp)
    assert created

    real = dataset_store._by_fingerprint
    calls: list[str] = []

    def blind(session: Session, tenant: str, fp: str) -> Dataset | None:
        calls.append(fp)
        return None if len(calls) == 1 else real(session, tenant, fp)

    monkeypatch.setattr(dataset_store, "_by_fingerprint", blind)
    with spool() as sp, unit_of_work(sessions) as s:
        s.add(weights("b", name="earlier work"))
        s.flush()
        row, created = add(s, sp)
        assert s.execute(text("SELECT 1")).scalar() == 1  # the transaction is still usable
    assert not created and row.id == winner.id and len(calls) == 2
    assert count(sessions, Dataset) == 1 and count(sessions, WeightsFile) == 1

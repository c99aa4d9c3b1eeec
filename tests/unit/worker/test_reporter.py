"""The reporter's live metrics: the latest epoch row, and the best one as the loop marks it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tas.core.hooks import EpochRow
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store import leases as lease_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.migrate import upgrade
from tas.store.orm import Job, MetricRow
from worker.reporter import DbReporter


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    settings = Settings(data_dir=tmp_path / "var", device="cpu")
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_best_metrics_are_the_rows_the_loop_marks_best(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        job = job_store.create_job(s, {"name": "r"}, tenant="default", max_attempts=1)
        s.commit()
        lease = lease_store.claim(s, job.id, "test/1/x", 60.0)
        assert lease is not None
        s.commit()
    reporter = DbReporter(sessions, lease, lease_seconds=60.0, interval=60.0)
    rows = [
        {"epoch": 1, "train_loss": 0.9, "val_accuracy": 0.5},
        {"epoch": 2, "train_loss": 0.7, "val_accuracy": 0.8},
        {"epoch": 3, "train_loss": 0.6, "val_accuracy": 0.8},  # equal: the first stays the best
    ]
    for row, best in zip(rows, [True, True, False], strict=True):
        reporter.epoch_end(EpochRow(row, is_best=best))
    assert reporter.flush()
    with sessions() as s:
        stored = s.get(Job, lease.job_id)
        assert stored is not None
        assert stored.best_metrics == rows[1]
        assert stored.latest_metrics == rows[2]
        values = s.scalars(select(MetricRow.values).order_by(MetricRow.epoch)).all()
    # The flag is not a key: the metrics rows are the epochs' rows as they were.
    assert values == [{k: v for k, v in r.items() if k != "epoch"} for r in rows]

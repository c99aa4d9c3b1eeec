"""The downsampling statement and the event stream's reads on both databases: SQLite's
json_extract/json_each and PostgreSQL's ->>/jsonb_each give the same points, the same keys and
the same rows after a cursor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from tas.store import job_feed, metric_series
from tas.store import jobs as job_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.migrate import upgrade
from tas.store.orm import JobLog, MetricRow
from tests.helpers.api import migrated_settings

SPEC = {"name": "t", "dataset": {"name": "iris"}}


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


def job_with_rows(sessions: sessionmaker[Session]) -> str:
    with sessions() as s:
        job = job_store.create_job(s, dict(SPEC), tenant="default", max_attempts=1)
        rows = [
            {"job_id": job.id, "epoch": 1 + i // 10, "step": i, "values": {"loss": float(i % 7)}}
            for i in range(1, 51)
        ]
        rows[4]["values"] = {"loss": "oops", "flag": True}  # not numbers: skipped
        rows[9]["values"]["lr"] = 3  # an integer counts
        rows += [
            {"job_id": job.id, "epoch": e, "step": -1, "values": {"acc": e / 10}} for e in (1, 2)
        ]
        s.execute(insert(MetricRow), rows)
        s.execute(
            insert(JobLog),
            [{"job_id": job.id, "source": "train", "message": f"l{i}"} for i in range(5)],
        )
        s.commit()
        return job.id


def test_points_keys_and_cursors(sessions: sessionmaker[Session]) -> None:
    job_id = job_with_rows(sessions)
    with sessions() as s:
        assert metric_series.series_keys(s, job_id, "step") == ["loss", "lr"]
        assert metric_series.series_keys(s, job_id, "epoch") == ["acc"]
        points = metric_series.downsample(s, job_id, "step", max_points=5)
        # row 1 alone, then 49 rows in 4 buckets by j * 4 // 49: 13, 12, 12, 12
        assert [p.rows for p in points] == [1, 13, 12, 12, 12]
        assert sum(p.rows for p in points) == 50
        assert (points[0].step, points[0].last) == (1, {"loss": 1.0})
        assert (points[-1].step, points[-1].last) == (50, {"loss": 1.0})
        second = points[1]
        assert (second.first_step, second.min["loss"], second.max["loss"]) == (2, 0.0, 6.0)
        assert second.min["lr"] == second.max["lr"] == 3.0
        assert all("flag" not in p.min for p in points)
        whole = metric_series.downsample(s, job_id, "epoch", max_points=10, keys=["acc", "x"])
        assert [(p.epoch, p.step, p.last) for p in whole] == [
            (1, None, {"acc": 0.1}),
            (2, None, {"acc": 0.2}),
        ]

        heads = job_feed.heads(s, [job_id, "nope"])
        assert heads["nope"] == (0, 0)
        top_metric, top_log = heads[job_id]
        after = job_feed.metric_rows_after(s, {job_id: top_metric - 3}, limit=2)
        assert [r.id for r in after] == [top_metric - 2, top_metric - 1]
        lines = job_feed.log_lines_after(s, {job_id: top_log - 2, "nope": 0}, limit=10)
        assert [line.message for line in lines] == ["l3", "l4"]

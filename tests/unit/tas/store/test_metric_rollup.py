"""The step rows' rollup on both databases: written with the rows by `upsert_metrics` (as the
worker's reporter writes them, replays included), equal to a rebuild from the rows, built for
existing jobs by the migration, and read by the downsampling so that each point is still exactly
the min, max and last of the rows it stands for."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session, sessionmaker

from tas.store import jobs as job_store
from tas.store import leases as lease_store
from tas.store import metric_rollup, metric_series
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.migrate import upgrade
from tas.store.orm import Job, MetricBlock, MetricRow
from tests.helpers.servers import PostgresServer

SPEC = {"name": "t", "dataset": {"name": "iris"}}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database per test: the migration test starts from an older revision."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tas.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
    yield url
    server.drop_database(url.rsplit("/", 1)[1])


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def new_job(sessions: sessionmaker[Session]) -> str:
    with sessions() as s:
        job = job_store.create_job(s, dict(SPEC), tenant="default", max_attempts=1)
        s.commit()
        return job.id


def run_rows(first: int, last: int, seed: int) -> list[dict[str, Any]]:
    """Step rows first..last (global steps, 100 a epoch) as a run reports them, an epoch row at
    each epoch's end, a key on some rows only and a value that is not a number."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for step in range(first, last + 1):
        epoch = 1 + (step - 1) // 100
        row: dict[str, Any] = {"epoch": epoch, "step": step, "loss": float(rng.normal(1, 0.3))}
        if step % 7 == 0:
            row["lr"] = float(rng.uniform())
        if step % 250 == 0:
            row["loss"] = "nan?"
        rows.append(row)
        if step % 100 == 0:
            rows.append({"epoch": epoch, "val_loss": float(rng.uniform())})
    return rows


def report(sessions: sessionmaker[Session], job_id: str, rows: list[dict[str, Any]]) -> None:
    """As the reporter flushes: a transaction per batch of 90 rows."""
    for i in range(0, len(rows), 90):
        with sessions() as s:
            lease_store.upsert_metrics(s, job_id, rows[i : i + 90])
            s.commit()


def blocks(sessions: sessionmaker[Session], job_id: str) -> list[tuple[Any, ...]]:
    with sessions() as s:
        found = s.scalars(
            select(MetricBlock)
            .where(MetricBlock.job_id == job_id)
            .order_by(MetricBlock.level, MetricBlock.start)
        )
        return [
            (
                b.level,
                b.start,
                b.stop,
                b.first_epoch,
                b.first_step,
                b.last_epoch,
                b.last_step,
                b.stats,
            )
            for b in found
        ]


def rebuilt(sessions: sessionmaker[Session], job_id: str) -> list[tuple[Any, ...]]:
    """The blocks built from scratch from the rows as they stand."""
    with sessions() as s:
        s.execute(delete(MetricBlock).where(MetricBlock.job_id == job_id))
        metric_rollup.extend(s, job_id)
        s.commit()
    return blocks(sessions, job_id)


def test_blocks_follow_the_rows_through_a_replay(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    report(sessions, job_id, run_rows(1, 1_000, seed=1))
    written = blocks(sessions, job_id)
    # every whole block at every level from 16 rows up, inside the 992 rows 16-blocks cover
    expected = {(lv, start) for lv in range(4, 10) for start in range(0, 992 - 2**lv + 1, 2**lv)}
    assert {(b[0], b[1]) for b in written} == expected
    assert written == rebuilt(sessions, job_id)
    first_block = next(b for b in written if b[:2] == (4, 0))
    assert first_block[3:7] == (1, 1, 1, 16)
    losses = [r["loss"] for r in run_rows(1, 16, seed=1) if "step" in r]
    assert first_block[7]["min"]["loss"] == pytest.approx(min(losses))
    assert first_block[7]["last"] == {"loss": pytest.approx(losses[-1])}  # step 16 has no lr

    # A resumed run replays from step 601 with other values (and writes on to step 1,200): the
    # blocks reaching past step 600 are rebuilt from the new rows.
    report(sessions, job_id, run_rows(601, 1_200, seed=2))
    after = blocks(sessions, job_id)
    assert after == rebuilt(sessions, job_id)
    assert [b for b in after if b[2] <= 600] == [b for b in written if b[2] <= 600]
    top = next(b for b in after if b[:2] == (10, 0))
    replayed = [
        r["loss"]
        for r in run_rows(601, 1_024, seed=2)
        if isinstance(r.get("loss"), float) and "step" in r
    ]
    assert top[7]["max"]["loss"] >= max(replayed)


def test_a_long_series_is_read_from_its_blocks(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    rows = run_rows(1, 3_007, seed=3)
    report(sessions, job_id, rows)
    steps = [r for r in rows if "step" in r]
    loss = np.array([r["loss"] if isinstance(r["loss"], float) else np.nan for r in steps])
    lr = np.array([r.get("lr", np.nan) for r in steps])
    n = len(steps)
    with sessions() as s:
        assert metric_rollup.cover(s, job_id, 50) is not None  # (n - 1) / 49 >= 16 rows a bucket
        assert metric_rollup.cover(s, job_id, 500) is None  # 6 rows a bucket: read row by row
        points = metric_series.downsample(s, job_id, "step", max_points=50)
        assert metric_series.downsample(s, job_id, "step", max_points=50, keys=["lr"]) == [
            metric_series.MetricPoint(
                p.epoch, p.step, p.rows, p.first_epoch, p.first_step,
                {k: v for k, v in p.last.items() if k == "lr"}, {"lr": p.min["lr"]},
                {"lr": p.max["lr"]},
            )
            if "lr" in p.min else
            metric_series.MetricPoint(p.epoch, p.step, p.rows, p.first_epoch, p.first_step)
            for p in points
        ]  # fmt: skip
    assert len(points) == 50
    assert (points[0].rows, points[0].step, points[-1].step) == (1, 1, 3_007)
    assert sum(p.rows for p in points) == n
    position = 0
    for p in points:  # consecutive, each exactly the min, max and last of its rows
        assert p.first_step == position + 1
        span = slice(position, position + p.rows)
        assert p.step == position + p.rows
        assert p.min["loss"] == pytest.approx(np.nanmin(loss[span]))
        assert p.max["loss"] == pytest.approx(np.nanmax(loss[span]))
        if np.isnan(lr[span]).all():
            assert "lr" not in p.min
        else:
            assert p.min["lr"] == pytest.approx(np.nanmin(lr[span]))
        last = {"loss": loss[span][-1], "lr": lr[span][-1]}
        assert p.last == pytest.approx({k: v for k, v in last.items() if not np.isnan(v)})
        position += p.rows
    # near-equal buckets: each within a block (2**5 rows at this size) of an equal share
    share = (n - 1) / 49
    assert all(abs(p.rows - share) <= 32 for p in points[1:])


def test_the_migration_builds_blocks_for_existing_jobs(database_url: str) -> None:
    upgrade(database_url, "0007")  # a deployment from before the rollup, with a job's rows
    engine = make_engine(database_url)
    try:
        sessions = make_sessionmaker(engine)
        job_id = "0" * 31 + "7"
        with sessions() as s:
            # Only the columns the jobs table had at 0007 (later revisions add some).
            s.execute(
                insert(Job).values(
                    id=job_id, tenant="default", name="t", spec={"name": "t"}, max_attempts=1
                )
            )
            rows = [
                {"job_id": job_id, "epoch": 1, "step": i, "values": {"loss": float(i)}}
                for i in range(100)
            ]
            s.execute(insert(MetricRow), rows)
            s.commit()
        upgrade(database_url)
        migrated = blocks(sessions, job_id)
        assert {(b[0], b[1]) for b in migrated} == {
            (lv, start) for lv in range(4, 7) for start in range(0, 96 - 2**lv + 1, 2**lv)
        }
        assert next(b for b in migrated if b[:2] == (6, 0))[7] == {
            "min": {"loss": 0.0}, "max": {"loss": 63.0}, "last": {"loss": 63.0}
        }  # fmt: skip
        assert migrated == rebuilt(sessions, job_id)
    finally:
        engine.dispose()

"""`GET /jobs/{id}/metrics?max_points=`: each series (epoch rows, step rows) downsampled in the
database to at most `max_points` points, checked against a numpy reference of the same buckets:
the first row a point of its own, the other rows split in training order into near-equal buckets,
each point its bucket's last row with the bucket's min and max per key."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert

from tas.store import metric_rollup
from tas.store.orm import MetricRow
from tests.helpers.specs import iris_spec

#: Rows as written: (epoch, step, values); step -1 for an epoch's row.
Rows = list[tuple[int, int, dict[str, Any]]]


def add_job(client: TestClient) -> str:
    r = client.post("/jobs", json=iris_spec(name="series"))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def write(client: TestClient, job_id: str, rows: Rows, *, rollup: bool = False) -> None:
    """Insert the rows at once; with `rollup`, then build the step rows' blocks as the worker's
    writes do (without: every series is read row by row, by the rule `reference` follows)."""
    with client.app.state.sessions() as s:  # type: ignore[attr-defined]
        s.execute(
            insert(MetricRow),
            [{"job_id": job_id, "epoch": e, "step": st, "values": v} for e, st, v in rows],
        )
        if rollup:
            metric_rollup.extend(s, job_id)
        s.commit()


def training(epochs: int, steps_per_epoch: int, seed: int = 0) -> tuple[Rows, Rows]:
    """Epoch rows and step rows as a run writes them (global steps), noisy values, a key that
    only some rows have, and a value that is not a number (skipped, never a 500)."""
    rng = np.random.default_rng(seed)
    epoch_rows: Rows = []
    step_rows: Rows = []
    step = 0
    for e in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            step += 10
            values: dict[str, Any] = {"train_loss": float(rng.normal(1 / e, 0.1))}
            if step % 30 == 0:
                values["lr"] = float(rng.uniform(0, 1))
            step_rows.append((e, step, values))
        row = {"train_loss": float(rng.normal(1 / e, 0.1)), "val_accuracy": float(rng.uniform())}
        if e == 3:
            row["val_accuracy"] = "n/a"
        epoch_rows.append((e, -1, row))
    return epoch_rows, step_rows


def reference(rows: Rows, max_points: int, keys: list[str]) -> list[dict[str, Any]]:
    """The points by the documented rule, with numpy (NaN where a row has no number)."""
    n = len(rows)
    buckets = min(max_points, n)
    index = np.zeros(n, dtype=np.int64)
    if n > 1:
        j = np.arange(n - 1)
        index[1:] = 1 + j * (buckets - 1) // (n - 1)
    table = {
        k: np.array(
            [
                float(v[k])
                if isinstance(v.get(k), int | float) and not isinstance(v[k], bool)
                else np.nan
                for _, _, v in rows
            ]
        )
        for k in keys
    }
    points = []
    for b in range(buckets):
        members = np.flatnonzero(index == b)
        first, last = members[0], members[-1]
        point: dict[str, Any] = {
            "epoch": rows[last][0],
            "step": None if rows[last][1] < 0 else rows[last][1],
            "rows": len(members),
            "first_epoch": rows[first][0],
            "first_step": None if rows[first][1] < 0 else rows[first][1],
            "last": {},
            "min": {},
            "max": {},
        }
        for k, col in table.items():
            values = col[members]
            if not np.isnan(values[-1]):
                point["last"][k] = float(values[-1])
            if not np.all(np.isnan(values)):
                point["min"][k] = float(np.nanmin(values))
                point["max"][k] = float(np.nanmax(values))
        points.append(point)
    return points


def as_reference(item: dict[str, Any]) -> dict[str, Any]:
    bucket = item["bucket"]
    last = {k: v for k, v in item.items() if k not in ("epoch", "step", "bucket")}
    return {
        "epoch": item["epoch"],
        "step": item["step"],
        "rows": bucket["rows"],
        "first_epoch": bucket["first_epoch"],
        "first_step": bucket["first_step"],
        "last": last,
        "min": bucket["min"],
        "max": bucket["max"],
    }


@pytest.mark.parametrize("max_points", [2, 3, 7, 100, 5000])
def test_buckets_match_a_numpy_reference(client: TestClient, max_points: int) -> None:
    job_id = add_job(client)
    epoch_rows, step_rows = training(epochs=40, steps_per_epoch=31)
    write(client, job_id, step_rows + epoch_rows)

    r = client.get(f"/jobs/{job_id}/metrics?kind=step&max_points={max_points}")
    assert r.status_code == 200, r.text
    got = [as_reference(item) for item in r.json()]
    want = reference(step_rows, max_points, ["train_loss", "lr"])
    assert len(got) == min(max_points, len(step_rows))
    assert got == want  # the same doubles: SQLite reads back what JSON held
    assert sum(p["rows"] for p in got) == len(step_rows)
    # the first and the last rows are points, exactly
    assert (got[0]["step"], got[0]["last"]) == (10, step_rows[0][2])
    assert (got[-1]["step"], got[-1]["last"]["train_loss"]) == (
        step_rows[-1][1],
        step_rows[-1][2]["train_loss"],
    )

    r = client.get(f"/jobs/{job_id}/metrics?max_points={max_points}")  # the epoch series
    got = [as_reference(item) for item in r.json()]
    assert got == reference(epoch_rows, max_points, ["train_loss", "val_accuracy"])
    assert all(p["step"] is None and p["first_step"] is None for p in got)


def test_a_short_series_comes_whole_and_matches_the_rows(client: TestClient) -> None:
    job_id = add_job(client)
    epoch_rows, step_rows = training(epochs=5, steps_per_epoch=3)
    write(client, job_id, epoch_rows + step_rows)
    rows = client.get(f"/jobs/{job_id}/metrics?kind=all").json()
    points = client.get(f"/jobs/{job_id}/metrics?kind=all&max_points=1000").json()
    assert [{k: v for k, v in p.items() if k != "bucket"} for p in points] == [
        {k: v for k, v in row.items() if k != "val_accuracy" or isinstance(v, float)}
        for row in rows
    ]
    assert {p["bucket"]["rows"] for p in points} == {1}
    assert "bucket" not in rows[0]  # plain rows keep their shape


def test_keys_narrow_the_answer_and_unknown_keys_are_absent(client: TestClient) -> None:
    job_id = add_job(client)
    epoch_rows, step_rows = training(epochs=6, steps_per_epoch=50)
    write(client, job_id, epoch_rows + step_rows)

    points = client.get(
        f"/jobs/{job_id}/metrics?kind=all&max_points=4&keys=train_loss,nope&keys=val_accuracy"
    ).json()
    assert len(points) == 8  # 4 per series
    for p in points:
        assert set(p) - {"epoch", "step", "bucket"} <= {"train_loss", "val_accuracy"}
        assert "nope" not in p["bucket"]["min"] and "lr" not in p["bucket"]["max"]
    order = [(p["epoch"], -1 if p["step"] is None else p["step"]) for p in points]
    assert order == sorted(order)  # the two series merged in training order
    steps = [p for p in points if p["step"] is not None]
    assert all(set(p["bucket"]["min"]) == {"train_loss"} for p in steps)

    rows = client.get(f"/jobs/{job_id}/metrics?keys=val_accuracy").json()
    assert [set(r) for r in rows] == [{"epoch", "step", "val_accuracy"}] * 6
    page = client.get(f"/jobs/{job_id}/metrics?keys=val_accuracy&limit=4")
    assert page.headers["link"].endswith('&offset=4&keys=val_accuracy>; rel="next"')


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("max_points=1", "max_points"),
        ("max_points=10001", "max_points"),
        ("max_points=x", "max_points"),
        ("max_points=10&offset=5", "offset"),
        ("max_points=10&limit=5", "limit"),
        ("keys=a%22b", "keys"),
        ("keys=" + "k" * 65, "keys"),
        ("keys=,,", "keys"),
        ("keys=" + ",".join(f"k{i}" for i in range(33)), "keys"),
    ],
)
def test_bounds_are_a_422_naming_the_parameter(client: TestClient, query: str, loc: str) -> None:
    job_id = add_job(client)
    r = client.get(f"/jobs/{job_id}/metrics?{query}")
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", loc]


def test_a_job_with_no_rows_has_no_points(client: TestClient) -> None:
    job_id = add_job(client)
    assert client.get(f"/jobs/{job_id}/metrics?kind=all&max_points=10").json() == []
    write(client, job_id, [(1, -1, {"loss": 0.5})])
    [point] = client.get(f"/jobs/{job_id}/metrics?max_points=2").json()
    assert point == {
        "epoch": 1,
        "step": None,
        "loss": 0.5,
        "bucket": {
            "rows": 1,
            "first_epoch": 1,
            "first_step": None,
            "min": {"loss": 0.5},
            "max": {"loss": 0.5},
        },
    }


def test_100k_step_rows_downsample_in_about_a_second_at_most(client: TestClient) -> None:
    job_id = add_job(client)
    rng = np.random.default_rng(1)
    losses = rng.normal(1.0, 0.2, 100_000)
    rows: Rows = [
        (1 + i // 1000, 10 * (i + 1), {"train_loss": float(x), "lr": 0.01})
        for i, x in enumerate(losses)
    ]
    write(client, job_id, rows, rollup=True)
    client.get(f"/jobs/{job_id}/metrics?kind=step&max_points=10")  # warm the page cache
    timings = []
    # the dashboard's request (named keys), then every key (found by a json_each pass first)
    for query in ("max_points=1000&keys=train_loss", "max_points=1000"):
        start = time.perf_counter()
        r = client.get(f"/jobs/{job_id}/metrics?kind=step&{query}")
        timings.append(time.perf_counter() - start)
        assert r.status_code == 200
        points = r.json()
        assert len(points) == 1000
        assert points[-1]["step"] == 1_000_000
        assert min(p["bucket"]["min"]["train_loss"] for p in points) == pytest.approx(losses.min())
    print(f"100,000 step rows to 1,000 points: {', '.join(f'{t * 1000:.0f} ms' for t in timings)}")
    assert timings[0] < 2.0  # 0.8-1.4 s measured on a shared 2-core machine at load 5-6

"""Searches through the real API and worker, on both stacks: a grid runs each combination once,
a seeded random search is reproducible, a pruned search stops trials early and still finds a
good model, and the best model is registered under the search's model_name."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.helpers import searches
from tests.helpers.servers import PostgresServer, RedisServer
from tests.helpers.stack import Stack, distributed_stack, embedded_stack

pytestmark = pytest.mark.integration

#: The controller steps every 0.25 s here (1 s by default), so a pruner's decision reaches a
#: trial that trains an epoch in a fraction of a second while it still has epochs to go.
FAST = {"TAS_SEARCH_INTERVAL_S": "0.25"}


@pytest.fixture(scope="module", params=["embedded", "redis_pg"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp(f"searches-{request.param}")
    if request.param == "embedded":
        with embedded_stack(tmp, **FAST) as s:
            yield s
    else:
        redis: RedisServer = request.getfixturevalue("redis_server")
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        url = pg.create_database()
        with distributed_stack(tmp, database_url=url, broker_url=redis.url, **FAST) as s:
            yield s


@pytest.mark.timeout(600)
def test_a_grid_runs_each_combination_once_and_registers_the_best(stack: Stack) -> None:
    lrs = [0.003, 0.03]
    widths = [[8], [16], [32]]
    body = searches.search_body(
        "grid",
        space={
            "training.lr": {"type": "categorical", "choices": lrs},
            "model.hidden": {"type": "categorical", "choices": widths},
        },
        sampler={"type": "grid", "seed": 3},
        max_trials=6,
        max_concurrent=2,
        model_name="grid-best",
    )
    created = searches.create(stack, body)
    assert created["status"] == "queued" and created["max_trials"] == 6
    done = searches.wait(stack, created["id"])
    assert done["status"] == "succeeded", (done, stack.logs())
    trials = done["trials"]
    assert [t["number"] for t in trials] == list(range(6))
    combos = sorted((t["params"]["training.lr"], t["params"]["model.hidden"]) for t in trials)
    assert combos == sorted(itertools.product(lrs, widths))
    assert all(t["state"] == "complete" and t["epochs"] == 2 for t in trials), trials
    assert done["counts"] == {"running": 0, "complete": 6, "pruned": 0, "failed": 0}

    # Trials are ordinary jobs, one per trial, each trained with its parameters.
    jobs = searches.trial_jobs(stack, created["id"])
    assert sorted(j["trial_number"] for j in jobs) == list(range(6))
    by_number = {j["trial_number"]: j for j in jobs}
    for t in trials:
        job = by_number[t["number"]]
        assert job["id"] == t["job_id"] and job["status"] == "succeeded"
        assert job["search_id"] == created["id"]
        assert job["spec"]["training"]["lr"] == t["params"]["training.lr"]
        assert job["spec"]["model"]["hidden"] == t["params"]["model.hidden"]
        assert t["value"] == max(t["intermediate"].values())

    best = done["best"]
    assert best["value"] == max(t["value"] for t in trials)
    assert best["number"] == min(t["number"] for t in trials if t["value"] == best["value"])
    assert done["model"] == {"name": "grid-best", "version": 1}
    model = stack.http.get("/models/grid-best").json()
    assert [(v["version"], v["job_id"]) for v in model["versions"]] == [(1, best["job_id"])]
    assert stack.job(best["job_id"])["result"]["model"] == {"name": "grid-best", "version": 1}
    r = stack.http.post("/predict", json={"model": "grid-best", "inputs": [[[0.0] * 8] * 8]})
    assert r.status_code == 200, r.text


@pytest.mark.timeout(600)
def test_a_seeded_random_search_is_reproducible(stack: Stack) -> None:
    body = searches.search_body(
        "random",
        space={
            "training.lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
            "training.batch_size": {"type": "int", "low": 32, "high": 128, "step": 32},
            "model.hidden": {"type": "categorical", "choices": [[8], [16, 16], [32]]},
        },
        sampler={"type": "random", "seed": 11},
        max_trials=4,
        max_concurrent=2,
    )
    first = searches.create(stack, body)
    second = searches.create(stack, {**body, "name": "random-again"})
    runs = [searches.wait(stack, s["id"]) for s in (first, second)]
    assert [r["status"] for r in runs] == ["succeeded"] * 2, stack.logs()
    params = [[(t["number"], t["params"]) for t in r["trials"]] for r in runs]
    assert params[0] == params[1]
    assert len({str(p) for _, p in params[0]}) == 4  # four different draws
    # The same parameters trained the same (seeded, on the CPU): the same values, the same best.
    assert [t["value"] for t in runs[0]["trials"]] == [t["value"] for t in runs[1]["trials"]]
    assert runs[0]["best"]["number"] == runs[1]["best"]["number"]


@pytest.mark.timeout(900)
def test_asha_prunes_trials_early_and_the_best_reaches_095(stack: Stack) -> None:
    """12 trials of 20 epochs: ASHA stops the trials that fall behind at epochs 1, 3 and 9 (a
    bad learning rate shows within an epoch), and the best trial still trains to the end."""
    body = searches.search_body(
        "asha",
        spec=searches.digits_base(epochs=20, batch_size=16),
        space={
            "training.lr": {"type": "float", "low": 0.00003, "high": 0.3, "log": True},
            "model.hidden": {"type": "categorical", "choices": [[32], [64]]},
        },
        sampler={"type": "random", "seed": 5},
        pruner={"type": "asha", "min_epochs": 1, "reduction_factor": 3},
        max_trials=12,
        max_concurrent=2,
        model_name="asha-best",
    )
    done = searches.wait(stack, searches.create(stack, body)["id"], timeout=800)
    assert done["status"] == "succeeded", (done, stack.logs())
    trials = done["trials"]
    assert len(trials) == 12
    pruned = [t for t in trials if t["state"] == "pruned"]
    complete = [t for t in trials if t["state"] == "complete"]
    shown = [(t["state"], t["epochs"], stack.job(t["job_id"])["status"]) for t in trials]
    assert pruned and complete, shown
    assert max(t["epochs"] for t in pruned) < 20 == min(t["epochs"] for t in complete), shown
    assert done["counts"]["pruned"] == len(pruned)
    for t in pruned:  # a pruned trial's job was stopped: cancelled, not trained out
        assert stack.job(t["job_id"])["status"] == "cancelled"
    assert done["best"]["state"] == "complete" and done["best"]["value"] >= 0.95
    assert done["model"]["name"] == "asha-best"
    versions = stack.http.get("/models/asha-best").json()["versions"]
    assert [v["job_id"] for v in versions] == [done["best"]["job_id"]]


@pytest.mark.timeout(300)
def test_optuna_keeps_its_tables_and_migrations_apart_from_tas(stack: Stack) -> None:
    """Optuna creates and migrates its own tables (with its own alembic_version): in a SQLite
    file of its own beside tas's, or on PostgreSQL in a schema of its own."""
    import sqlalchemy as sa

    done = searches.wait(
        stack, searches.create(stack, searches.search_body("apart", max_trials=1))["id"]
    )
    assert done["status"] == "succeeded", stack.logs()
    database = stack.env.get("TAS_DATABASE_URL") or f"sqlite:///{stack.data_dir / 'tas.db'}"
    tas = sa.create_engine(database)
    try:
        with tas.connect() as conn:
            assert conn.execute(
                sa.text("SELECT version_num FROM alembic_version")
            ).scalars().all() == ["0009"]
            tables = set(sa.inspect(conn).get_table_names())
            assert "searches" in tables and "trials" not in tables and "studies" not in tables
            if conn.dialect.name == "postgresql":
                optuna_tables = set(sa.inspect(conn).get_table_names(schema="optuna"))
                assert {"studies", "trials", "alembic_version"} <= optuna_tables
                version = conn.execute(sa.text("SELECT version_num FROM optuna.alembic_version"))
                assert version.scalar_one() != "0009"
    finally:
        tas.dispose()
    if not stack.env.get("TAS_DATABASE_URL"):
        optuna_db = sa.create_engine(f"sqlite:///{stack.data_dir / 'optuna.db'}")
        try:
            with optuna_db.connect() as conn:
                tables = set(sa.inspect(conn).get_table_names())
                assert {"studies", "trials", "alembic_version"} <= tables and "jobs" not in tables
        finally:
            optuna_db.dispose()

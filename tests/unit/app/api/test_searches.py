"""The searches API in process: a space that can produce an invalid job spec is a 422 naming the
path (checked as POST /jobs checks a spec), the grid and objective rules, reading, paging,
cancel, and a trial's job in /jobs. The controller is stepped by hand (the app's loop is off)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.services import searches as search_service
from tas.search import study as study_mod
from tas.search.controller import Controller
from tas.settings import Settings
from tas.store import searches as search_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.orm import Search
from tas.store.unit_of_work import unit_of_work
from tests.helpers.api import RecordingPublisher


def body(**overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": "lr-search",
        "spec": {
            "dataset": {"name": "digits"},
            "model": {"arch": "mlp", "hidden": [16]},
            "training": {"epochs": 2, "optimizer": "adam"},
        },
        "space": {"training.lr": {"type": "float", "low": 0.0001, "high": 0.1, "log": True}},
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "sampler": {"type": "random", "seed": 1},
        "pruner": {"type": "median"},
        "max_trials": 4,
        "max_concurrent": 2,
    }
    out.update(overrides)
    return out


def problems(r: Any) -> list[tuple[list[Any], str]]:
    assert r.status_code == 422, r.text
    return [(p["loc"], p["msg"]) for p in r.json()["detail"]]


def test_a_search_is_created_queued_with_what_it_was_given(client: TestClient) -> None:
    r = client.post("/searches", json=body(model_name="digits-best"))
    assert r.status_code == 201, r.text
    s = r.json()
    assert r.headers["location"] == f"/searches/{s['id']}"
    assert s["status"] == "queued" and s["trials"] == [] and s["best"] is None
    assert s["objective"] == {"metric": "val_accuracy", "direction": "maximize"}
    assert s["sampler"] == {"type": "random", "seed": 1}
    assert s["pruner"] == {"type": "median", "startup_trials": 5, "warmup_epochs": 0}
    assert s["space"]["training.lr"] == {
        "type": "float",
        "low": 0.0001,
        "high": 0.1,
        "log": True,
    }
    assert (s["max_trials"], s["max_concurrent"], s["model_name"]) == (4, 2, "digits-best")
    assert s["counts"] == {"running": 0, "complete": 0, "pruned": 0, "failed": 0}
    assert s["importances"] is None and s["model"] is None and s["finished_at"] is None
    assert client.get(f"/searches/{s['id']}").json()["id"] == s["id"]


@pytest.mark.parametrize(
    ("space", "path", "says"),
    [
        # a bound the spec's own field refuses
        (
            {"training.batch_size": {"type": "int", "low": 0, "high": 64, "step": 32}},
            "training.batch_size",
            "training.batch_size = 0 makes a job spec that is refused at training.batch_size",
        ),
        # a choice the spec's registry does not know
        (
            {"training.optimizer": {"type": "categorical", "choices": ["adam", "rmsprop"]}},
            "training.optimizer",
            '"rmsprop" makes a job spec that is refused at training.optimizer',
        ),
        # a choice the dataset refuses (BCE on 10 classes): the dataset's spec_problems
        (
            {"training.loss": {"type": "categorical", "choices": ["cross_entropy", "bce"]}},
            "training.loss",
            "at most 2 classes",
        ),
        # a model too big for the deployment: the size check of a submit
        (
            {"model.hidden": {"type": "categorical", "choices": [[16], [65536, 65536, 65536]]}},
            "model.hidden",
            "parameters",
        ),
        # a middle value of a short int range (the global batch must split across processes)
        (
            {"training.batch_size": {"type": "int", "low": 32, "high": 36, "step": 2}},
            "training.batch_size",
            "= 34 makes a job spec",
        ),
        # a value of a whole section
        (
            {
                "training.early_stopping": {
                    "type": "categorical",
                    "choices": [None, {"patience": 0}],
                }
            },
            "training.early_stopping",
            "refused at training.early_stopping.patience",
        ),
    ],
)
def test_a_space_that_can_make_an_invalid_spec_is_a_422_naming_its_path(
    client: TestClient, space: dict[str, Any], path: str, says: str, settings: Settings
) -> None:
    extra: dict[str, Any] = {}
    if path == "training.batch_size" and "36" in str(space):
        extra["spec"] = {**body()["spec"], "resources": {"processes": 4}}
    if path == "model.hidden":
        settings.max_parameters = 1_000_000
    found = problems(client.post("/searches", json=body(space=space, **extra)))
    assert found[0][0] == ["body", "space", path], found
    assert says in found[0][1], found


@pytest.mark.parametrize(
    ("overrides", "loc", "says"),
    [
        (
            {"space": {"training.lrr": {"type": "float", "low": 0.1, "high": 0.2}}},
            ["body", "space", "training.lrr"],
            "did you mean 'lr'",
        ),
        (
            {"space": {"name": {"type": "categorical", "choices": ["a"]}}},
            ["body", "space", "name"],
            "cannot be searched",
        ),
        (
            {
                "space": {
                    "training": {"type": "categorical", "choices": [{"lr": 0.1}]},
                    "training.lr": {"type": "float", "low": 0.1, "high": 0.2},
                }
            },
            ["body", "space", "training.lr"],
            "lies inside 'training'",
        ),
        (
            {"sampler": {"type": "grid"}},
            ["body", "space", "training.lr"],
            "a float range has none",
        ),
        (
            {
                "sampler": {"type": "grid"},
                "space": {"training.lr": {"type": "categorical", "choices": [0.1, 0.01]}},
                "max_trials": 3,
            },
            ["body", "max_trials"],
            "the grid has 2 combinations",
        ),
        (
            {
                "sampler": {"type": "grid"},
                "space": {"training.seed": {"type": "int", "low": 0, "high": 10**15}},
            },
            ["body", "space"],
            "the grid has 1000000000000001 combinations; at most 10000",
        ),
        ({"max_trials": None}, ["body", "max_trials"], "required for a random search"),
        ({"objective": {"metric": "val_r2"}}, ["body", "objective", "metric"], "val_accuracy"),
        (
            {"spec": {"dataset": {"name": "digits", "val_fraction": 0.0}}},
            ["body", "objective", "metric"],
            "needs a validation split",
        ),
        (
            {"spec": {"dataset": {"name": "digits"}, "training": {"lr": -1}}},
            ["body", "spec", "training", "lr"],
            "greater than 0",
        ),
        (
            {"spec": {"dataset": {"name": "digits"}, "training": {"loss": "bce"}}},
            ["body", "spec", "training", "loss"],
            "at most 2 classes",
        ),
        (
            {"spec": {"dataset": {"id": "0" * 32}}},
            ["body", "spec", "dataset", "id"],
            "no uploaded dataset",
        ),
        (
            {"space": {"training.lr": {"type": "float", "low": 0.1, "high": 0.01}}},
            ["body", "space", "training.lr", "float"],
            "must not be above high",
        ),
        ({"pruner": {"type": "hyperband"}}, ["body", "pruner"], "asha"),
        ({"max_concurrent": 0}, ["body", "max_concurrent"], "greater than or equal to 1"),
    ],
)
def test_a_bad_search_is_a_422_naming_the_field(
    client: TestClient, overrides: dict[str, Any], loc: list[Any], says: str
) -> None:
    found = problems(client.post("/searches", json=body(**overrides)))
    assert any(f[0] == loc and says in f[1] for f in found), found


def test_a_grid_search_defaults_to_the_whole_grid(client: TestClient) -> None:
    r = client.post(
        "/searches",
        json=body(
            sampler={"type": "grid"},
            space={
                "training.lr": {"type": "categorical", "choices": [0.1, 0.01]},
                "training.batch_size": {"type": "int", "low": 32, "high": 96, "step": 32},
            },
            max_trials=None,
        ),
    )
    assert r.status_code == 201, r.text
    assert r.json()["max_trials"] == 6
    assert r.json()["objective"]["direction"] == "maximize"


def test_the_objective_s_direction_follows_the_metric_when_not_given(client: TestClient) -> None:
    r = client.post("/searches", json=body(objective={"metric": "val_loss"}))
    assert r.status_code == 201, r.text
    assert r.json()["objective"] == {"metric": "val_loss", "direction": "minimize"}


def test_searches_are_listed_newest_first_in_pages(client: TestClient) -> None:
    ids = [client.post("/searches", json=body(name=f"s{i}")).json()["id"] for i in range(3)]
    first = client.get("/searches", params={"limit": 2}).json()
    assert [s["id"] for s in first["items"]] == ids[::-1][:2]
    assert all("trials" not in s and s["trial_count"] == 0 for s in first["items"])
    rest = client.get("/searches", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [s["id"] for s in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    assert client.get("/searches", params={"status": "running"}).json()["items"] == []
    assert problems(client.get("/searches", params={"status": "done"}))[0][0] == [
        "query",
        "status",
    ]
    assert client.get("/searches", params={"sort": "name"}).status_code == 422
    assert client.get("/searches/" + "0" * 32).status_code == 404


def advance_once(
    settings: Settings, tmp_path: Path, search_id: str, published: RecordingPublisher
) -> None:
    """One step of the search controller on `search_id`, as its thread in the API takes it."""
    engine = make_engine(settings.resolved_database_url)
    sessions = make_sessionmaker(engine)
    with unit_of_work(sessions) as s:
        assert search_store.take_lease(s, search_id, "me", 30)
    Controller(
        sessions=sessions,
        storage=study_mod.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}"),
        submit=search_service.submitter(settings),
        publish=published.publish,
        owner="me",
        lease_s=30,
        max_active_jobs=100,
    ).advance(search_id)
    engine.dispose()


def test_a_step_starts_trials_as_jobs_and_cancel_stops_them(
    client: TestClient, settings: Settings, published: RecordingPublisher, tmp_path: Path
) -> None:
    search = client.post("/searches", json=body()).json()
    advance_once(settings, tmp_path, search["id"], published)

    got = client.get(f"/searches/{search['id']}").json()
    assert got["status"] == "running" and got["started_at"] is not None
    assert [(t["number"], t["state"]) for t in got["trials"]] == [(0, "running"), (1, "running")]
    jobs = client.get("/jobs", params={"search_id": search["id"]}).json()["items"]
    assert sorted((j["trial_number"], j["search_id"]) for j in jobs) == [
        (0, search["id"]),
        (1, search["id"]),
    ]
    assert {j["id"] for j in jobs} == {t["job_id"] for t in got["trials"]}
    assert {job_id for job_id, _ in published.published} == {j["id"] for j in jobs}
    job = client.get(f"/jobs/{jobs[0]['id']}").json()
    assert job["search_id"] == search["id"] and job["name"].startswith("lr-search-t")
    lr = next(t for t in got["trials"] if t["job_id"] == job["id"])["params"]["training.lr"]
    assert job["spec"]["training"]["lr"] == lr
    assert client.get("/jobs", params={"search_id": "0" * 32}).json()["items"] == []

    cancelled = client.post(f"/searches/{search['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert {client.get(f"/jobs/{j['id']}").json()["status"] for j in jobs} == {"cancelled"}
    again = client.post(f"/searches/{search['id']}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]


# Ranges past what the samplers can hold: each a 422 at its space path, never a 500 (counting
# the grid of a 2**63-value range once overflowed `len(range)`).
@pytest.mark.parametrize(
    ("space", "sampler", "loc", "says"),
    [
        (
            {"training.seed": {"type": "int", "low": 0, "high": 2**63 - 1}},
            "grid",
            ["body", "space", "training.seed", "int", "high"],
            "less than or equal to 9007199254740992",
        ),
        (
            {"training.seed": {"type": "int", "low": 0, "high": 2**63 - 1}},
            "tpe",
            ["body", "space", "training.seed", "int", "high"],
            "less than or equal to 9007199254740992",
        ),
        (
            {"training.epochs": {"type": "int", "low": -(2**70), "high": 3}},
            "grid",
            ["body", "space", "training.epochs", "int", "low"],
            "greater than or equal to -9007199254740992",
        ),
        (
            {"training.epochs": {"type": "int", "low": -(2**70), "high": 3}},
            "random",
            ["body", "space", "training.epochs", "int", "low"],
            "greater than or equal to -9007199254740992",
        ),
        (
            {"training.epochs": {"type": "int", "low": 1, "high": 1, "step": 2**64}},
            "grid",
            ["body", "space", "training.epochs", "int", "step"],
            "less than or equal to 9007199254740992",
        ),
        (
            {"training.lr": {"type": "float", "low": -1.7e308, "high": 1.7e308}},
            "random",
            ["body", "space", "training.lr", "float"],
            "the range is too wide",
        ),
        # TPE's draws fail on a NaN over these (the search would log and retry forever).
        (
            {"training.weight_decay": {"type": "float", "low": 0.0, "high": 1e-323}},
            "tpe",
            ["body", "space", "training.weight_decay", "float"],
            "too narrow for the sampler",
        ),
        (
            {
                "training.lr": {
                    "type": "float",
                    "low": 0.01,
                    "high": 0.01 * (1 + 1e-15),
                    "log": True,
                }
            },
            "tpe",
            ["body", "space", "training.lr", "float"],
            "log range is too narrow for the sampler",
        ),
    ],
)
def test_a_range_beyond_what_the_sampler_holds_is_a_422_at_its_path(
    client: TestClient, space: dict[str, Any], sampler: str, loc: list[Any], says: str
) -> None:
    r = client.post("/searches", json=body(space=space, sampler={"type": sampler}, max_trials=2))
    found = problems(r)
    assert any(f[0] == loc and says in f[1] for f in found), found


def test_a_search_stored_with_a_range_now_refused_is_still_read_and_stepped(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    """A search accepted before the narrowness bound (its space set in the database here) is
    read back as stored, listed and shown, and its controller still starts trials."""
    r = client.post(
        "/searches",
        json=body(
            space={"training.weight_decay": {"type": "float", "low": 0.0, "high": 0.1}},
            sampler={"type": "tpe", "seed": 3},
        ),
    )
    assert r.status_code == 201, r.text
    search_id = r.json()["id"]
    narrow = {"training.weight_decay": {"type": "float", "low": 0.0, "high": 1e-323, "log": False}}
    engine = make_engine(settings.resolved_database_url)
    with unit_of_work(make_sessionmaker(engine)) as s:
        s.execute(update(Search).where(Search.id == search_id).values(space=narrow))
    engine.dispose()

    shown = client.get(f"/searches/{search_id}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["space"] == narrow
    assert [x["id"] for x in client.get("/searches").json()["items"]] == [search_id]
    advance_once(settings, tmp_path, search_id, RecordingPublisher())
    trials = client.get(f"/searches/{search_id}").json()["trials"]
    assert len(trials) == 2
    assert all(0.0 <= t["params"]["training.weight_decay"] <= 1e-323 for t in trials)


@pytest.mark.parametrize(
    ("param", "loc"),
    [
        ('{"type": "float", "low": 0.001, "high": 1e999}', ["float", "high"]),
        ('{"type": "float", "low": -1e999, "high": 0.1}', ["float", "low"]),
        ('{"type": "int", "low": 0, "high": 1e999}', ["int", "high"]),
        ('{"type": "categorical", "choices": [0.1, 1e999]}', ["categorical"]),
        ('{"type": "categorical", "choices": [[{"a": -1e999}]]}', ["categorical"]),
    ],
)
def test_a_number_that_is_not_finite_is_a_422_at_its_path(
    client: TestClient, param: str, loc: list[Any]
) -> None:
    # Written out by hand: 1e999 is valid JSON that Python reads as infinity, and no client
    # encoder writes it.
    raw = json.dumps(body(space={"training.lr": "PARAM"})).replace('"PARAM"', param)
    r = client.post("/searches", content=raw, headers={"content-type": "application/json"})
    found = problems(r)
    at = ["body", "space", "training.lr", *loc]
    assert any(f[0][: len(at)] == at for f in found), found
    assert any("finite" in f[1] or "valid integer" in f[1] for f in found), found


def test_the_widest_int_range_is_searched_with_exact_values(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    """At 2**53 a float still holds every integer, so the seed a trial's job trains with is
    the one Optuna drew, inside the range."""
    r = client.post(
        "/searches",
        json=body(space={"training.seed": {"type": "int", "low": 0, "high": 2**53}}),
    )
    assert r.status_code == 201, r.text
    search = r.json()
    grid = client.post(
        "/searches",
        json=body(
            name="seed-grid",
            sampler={"type": "grid"},
            space={"training.seed": {"type": "int", "low": 0, "high": 2**53, "step": 2**50}},
            max_trials=None,
        ),
    )
    assert grid.status_code == 201, grid.text
    assert grid.json()["max_trials"] == 9
    advance_once(settings, tmp_path, search["id"], RecordingPublisher())
    trials = client.get(f"/searches/{search['id']}").json()["trials"]
    assert len(trials) == 2
    for t in trials:
        seed = t["params"]["training.seed"]
        assert isinstance(seed, int) and 0 <= seed <= 2**53
        job = client.get(f"/jobs/{t['job_id']}").json()
        assert job["spec"]["training"]["seed"] == seed

"""`client.searches` against a scripted server (httpx's MockTransport): what it sends, how it
reads a search and its trials, how it pages, and how `watch`/`wait` poll a search to its end,
riding out a server that drops for a moment."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tas.client import (
    ApiError,
    ConnectionFailed,
    Retry,
    SearchCancelled,
    SearchFailed,
    Trial,
    WaitTimeout,
)
from tests.unit.tas.client.test_client import Server, make

SPACE = {
    "training.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "model.hidden": {"type": "categorical", "choices": [[128], [256, 256]]},
}

STATES = ("running", "complete", "pruned", "failed")


def trial_json(number: int, state: str = "complete", **extra: Any) -> dict[str, Any]:
    value = 0.9 + number / 100 if state == "complete" else None
    return {
        "number": number,
        "job_id": f"job{number}",
        "params": {"training.lr": 0.01 * (number + 1), "model.hidden": [128]},
        "state": state,
        "value": value,
        "epochs": 3 if state == "complete" else 1,
        "intermediate": {"1": 0.5, "2": 0.7, "3": value} if value else {"1": 0.4},
        **extra,
    }


def search_json(
    status: str = "running", trials: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    trials = trials if trials is not None else [trial_json(0), trial_json(1, "running")]
    done = [t for t in trials if t["state"] == "complete"]
    counts = {k: sum(t["state"] == k for t in trials) for k in STATES}
    return {
        "id": "s1",
        "name": "lr-search",
        "status": status,
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "sampler": {"type": "tpe", "seed": 1},
        "pruner": {"type": "median"},
        "space": SPACE,
        "max_trials": 4,
        "max_concurrent": 2,
        "model_name": "iris-best",
        "created_at": "2026-12-02T02:00:00Z",
        "finished_at": None,
        "trials": trials,
        "best": max(done, key=lambda t: t["value"]) if done else None,
        "importances": None,
        "model": None,
        "counts": counts,
        **extra,
    }


BODY = {
    "name": "lr-search",
    "spec": {"name": "iris", "dataset": {"name": "iris"}, "model": {"arch": "mlp"}},
    "space": SPACE,
    "objective": {"metric": "val_accuracy", "direction": "maximize"},
    "sampler": {"type": "tpe", "seed": 1},
    "pruner": {"type": "median"},
    "max_trials": 4,
    "max_concurrent": 2,
    "model_name": "iris-best",
}


def test_create_posts_the_body_and_reads_the_search_and_its_trials() -> None:
    server = Server({"/searches": [httpx.Response(201, json=search_json("queued"))]})
    search = make(server, []).searches.create(BODY)
    (request,) = server.requests
    assert (request.method, request.url.path) == ("POST", "/searches")
    assert httpx.Response(200, content=request.content).json() == BODY
    assert request.headers["authorization"] == "Bearer tas_k"
    assert (search.id, search.status, search.metric, search.direction) == (
        "s1",
        "queued",
        "val_accuracy",
        "maximize",
    )
    assert search.max_trials == 4 and search.model_name == "iris-best" and not search.finished
    first, second = search.trials
    assert first.params == {"training.lr": 0.01, "model.hidden": [128]}
    assert first.intermediate == {1: 0.5, 2: 0.7, 3: 0.9}  # epochs as numbers, in order
    assert (second.state, second.value, second.last_value) == ("running", None, 0.4)
    assert search.best is not None and search.best.number == 0 and search.best.job_id == "job0"
    assert search.created_at is not None and search.created_at.tzinfo is not None


def test_a_refused_space_is_an_api_error_naming_the_path() -> None:
    problems = [{"loc": ["body", "space", "training.lr", "low"], "msg": "must be > 0", "type": "x"}]
    server = Server({"/searches": [httpx.Response(422, json={"detail": problems})]})
    with pytest.raises(ApiError) as caught:
        make(server, []).searches.create(BODY)
    assert caught.value.status == 422
    assert caught.value.message == "space.training.lr.low: must be > 0"


def test_list_follows_the_cursor_with_the_status_filter_and_stops_at_the_limit() -> None:
    item = {k: v for k, v in search_json().items() if k != "trials"}
    pages = [
        {"items": [{**item, "id": "a"}, {**item, "id": "b"}], "next_cursor": "c1"},
        {"items": [{**item, "id": "c"}, {**item, "id": "d"}], "next_cursor": "c2"},
    ]
    server = Server({"/searches": [httpx.Response(200, json=p) for p in pages]})
    searches = list(make(server, []).searches.list(status="running", limit=3, page_size=2))
    assert [s.id for s in searches] == ["a", "b", "c"]
    assert searches[0].trials == [] and searches[0].best is not None  # a list item: no trials
    first, second = server.requests
    assert first.url.params.get_list("status") == ["running"]
    assert first.url.params["limit"] == "2"
    assert "cursor" not in first.url.params and second.url.params["cursor"] == "c1"


def test_cancel_posts_and_reads_the_answer() -> None:
    server = Server(
        {
            "/searches/s1": [httpx.Response(200, json=search_json())],
            "/searches/s1/cancel": [httpx.Response(200, json=search_json("cancelled"))],
        }
    )
    search = make(server, []).searches.get("s1")
    assert search.cancel() is search and search.status == "cancelled"
    assert server.requests[-1].method == "POST"


def test_watch_hands_on_each_change_once_and_ends_when_the_search_does() -> None:
    running = search_json()
    later = search_json(trials=[trial_json(0), trial_json(1), trial_json(2, "running")])
    done = search_json(
        "succeeded",
        trials=[trial_json(0), trial_json(1), trial_json(2, "pruned")],
        model={"name": "iris-best", "version": 1},
        importances={"training.lr": 0.8, "model.hidden": 0.2},
    )
    server = Server(
        {
            "/searches/s1": [
                httpx.Response(200, json=running),  # get
                httpx.Response(200, json=running),  # watch: the first read is handed on
                httpx.Response(200, json=running),  # unchanged: not handed on
                httpx.ConnectError("restarting"),  # ridden out with a back-off
                httpx.Response(200, json=later),
                httpx.Response(200, json=done),
            ]
        }
    )
    sleeps: list[float] = []
    search = make(server, sleeps).searches.get("s1")
    seen = [(s.status, [t.state for t in s.trials]) for s in search.watch(poll_s=2.0)]
    assert seen == [
        ("running", ["complete", "running"]),
        ("running", ["complete", "complete", "running"]),
        ("succeeded", ["complete", "complete", "pruned"]),
    ]
    assert sleeps == [2.0, 2.0, 0.5, 2.0]
    assert search.model == ("iris-best", 1) and search.importances == {
        "training.lr": 0.8,
        "model.hidden": 0.2,
    }
    assert search.best is not None and search.best.number == 1


def test_wait_raises_how_the_search_ended() -> None:
    failed = search_json("failed", error={"type": "TrialsFailed", "message": "every trial failed"})
    server = Server({"/searches/s1": [httpx.Response(200, json=failed)] * 2})
    client = make(server, [])
    search = client.searches.get("s1")
    with pytest.raises(SearchFailed, match="failed: TrialsFailed: every trial failed") as caught:
        search.wait()
    assert caught.value.search is search

    server = Server({"/searches/s1": [httpx.Response(200, json=search_json("cancelled"))] * 2})
    with pytest.raises(SearchCancelled, match="s1 was cancelled"):
        make(server, []).searches.get("s1").wait()

    server = Server({"/searches/s1": [httpx.Response(200, json=search_json("succeeded"))] * 2})
    assert make(server, []).searches.get("s1").wait().status == "succeeded"


def test_wait_times_out_and_gives_up_on_a_server_that_stays_away() -> None:
    server = Server({"/searches/s1": [httpx.Response(200, json=search_json())] * 10})
    search = make(server, []).searches.get("s1")
    with pytest.raises(WaitTimeout, match="still running"):
        search.wait(timeout=0.0)

    server = Server(
        {"/searches/s1": [httpx.Response(200, json=search_json())] + [httpx.ConnectError("x")] * 9}
    )
    sleeps: list[float] = []
    client = make(server, sleeps, retry=Retry(attempts=3, initial_s=0.5, max_s=1.0))
    with pytest.raises(ConnectionFailed):
        client.searches.get("s1").wait()
    assert sleeps == [0.5, 1.0, 1.0]


def test_a_trial_job_says_which_search_it_belongs_to() -> None:
    from tests.unit.tas.client.test_client import job_json

    server = Server(
        {
            "/jobs/j1": [httpx.Response(200, json=job_json(search_id="s1", trial_number=3))],
            "/jobs/j2": [httpx.Response(200, json=job_json(id="j2"))],
        }
    )
    client = make(server, [])
    trial_job = client.jobs.get("j1")
    assert (trial_job.search_id, trial_job.trial_number) == ("s1", 3)
    assert client.jobs.get("j2").search_id is None


def test_a_trial_keeps_what_the_api_sent() -> None:
    raw = {**trial_json(5, "pruned"), "intermediate": {"2": 0.3, "1": 0.2, "x": 1}, "extra": 1}
    trial = Trial.of(raw)
    assert trial.intermediate == {1: 0.2, 2: 0.3} and trial.last_value == 0.3
    assert trial.raw["extra"] == 1

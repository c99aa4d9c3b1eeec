"""Searches the tests create, and waiting for one to finish through the API."""

from __future__ import annotations

import time
from typing import Any

from tests.helpers.stack import Stack

FINISHED = {"succeeded", "failed", "cancelled"}


def digits_base(epochs: int = 2, **training: Any) -> dict[str, Any]:
    """A small, seeded MLP on digits: a trial of it trains in about a second."""
    return {
        "dataset": {"name": "digits", "val_fraction": 0.2},
        "model": {"arch": "mlp", "hidden": [32]},
        "training": {
            "epochs": epochs,
            "batch_size": 64,
            "optimizer": "adam",
            "lr": 0.01,
            "seed": 1,
            **training,
        },
        "checkpoint": {"every_epochs": 1, "keep_last": 1},
    }


def search_body(name: str, **parts: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "spec": digits_base(),
        "space": {"training.lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True}},
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "sampler": {"type": "random", "seed": 7},
        "max_trials": 3,
        "max_concurrent": 2,
    }
    body.update(parts)
    return body


def create(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    r = stack.http.post("/searches", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def get(stack: Stack, search_id: str) -> dict[str, Any]:
    r = stack.http.get(f"/searches/{search_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait(
    stack: Stack, search_id: str, *, timeout: float = 300, predicate: Any = None
) -> dict[str, Any]:
    """Poll until the search has finished (or `predicate(search)` holds); ride out a server that
    is restarting (connection refused) meanwhile."""
    import httpx

    deadline = time.monotonic() + timeout
    search: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            search = get(stack, search_id)
        except httpx.TransportError:
            time.sleep(0.5)
            continue
        if search["status"] in FINISHED or (predicate is not None and predicate(search)):
            return search
        time.sleep(0.5)
    raise AssertionError(
        f"search {search_id} still {search.get('status')} after {timeout}s:"
        f" {[(t['number'], t['state'], t['epochs']) for t in search.get('trials', [])]}\n"
        f"{stack.logs()}"
    )


def trial_jobs(stack: Stack, search_id: str) -> list[dict[str, Any]]:
    r = stack.http.get("/jobs", params={"search_id": search_id, "limit": 200})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])

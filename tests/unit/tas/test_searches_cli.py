"""`tas searches ...` on a scripted API (httpx's MockTransport behind tas.client): what `create`,
`get`, `list` and `cancel` print, what `--follow` prints on a pipe (a line per trial that changes
state) and on a terminal (a live table), and the exit codes (0 succeeded, 1 failed, 2 cancelled,
3 usage or connection error, 130 detached). The real server's side is
tests/integration/test_client.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tas import client_cli
from tas.cli import cli
from tas.client import Client
from tests.unit.tas.client.test_searches import search_json, trial_json

SUCCEEDED = search_json(
    "succeeded",
    trials=[trial_json(0), trial_json(1, "pruned"), trial_json(2)],
    model={"name": "iris-best", "version": 1},
    importances={"training.lr": 0.75, "model.hidden": 0.25},
    finished_at="2026-12-02T02:05:00Z",
)


def script(*answers: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The search's successive reads: each answer once, then the last one for ever."""
    yield from answers
    while True:
        yield answers[-1]


def api(
    *answers: dict[str, Any], seen: list[httpx.Request] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    """A server whose search s1 reads as `answers`, one per GET, the last repeated."""
    reads = script(*answers)

    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        path = request.url.path
        if request.method == "POST" and path == "/searches":
            return httpx.Response(201, json=search_json("queued", trials=[]))
        if request.method == "POST" and path == "/searches/s1/cancel":
            return httpx.Response(200, json=search_json("cancelled"))
        if path == "/searches/s1":
            return httpx.Response(200, json=next(reads))
        if path == "/searches":
            item = {k: v for k, v in answers[-1].items() if k != "trials"}
            return httpx.Response(200, json={"items": [item], "next_cursor": None})
        return httpx.Response(404, json={"detail": f"no route {path}"})

    return handle


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Point the CLI's client at a handler (no sleeping between polls)."""

    def use(handler: Callable[[httpx.Request], httpx.Response]) -> None:
        def make(url: str | None, api_key: str | None) -> Client:
            return Client(
                "http://tas.test", api_key, transport=httpx.MockTransport(handler), sleep=noop
            )

        monkeypatch.setattr(client_cli, "Client", make)

    return use


def noop(_: float) -> None:
    pass


@pytest.fixture
def search_file(tmp_path: Path) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(
        "name: lr-search\n"
        "spec: {name: iris, dataset: {name: iris}, model: {arch: mlp}}\n"
        "space: {training.lr: {type: float, low: 0.0001, high: 0.1, log: true}}\n"
        "objective: {metric: val_accuracy, direction: maximize}\n"
        "max_trials: 3\n"
    )
    return path


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def test_create_sends_the_file_and_prints_only_the_id(
    serve: Callable[..., None], search_file: Path
) -> None:
    seen: list[httpx.Request] = []
    serve(api(SUCCEEDED, seen=seen))
    result = run("searches", "create", str(search_file))
    assert (result.exit_code, result.stdout) == (0, "s1\n"), result.output
    body = json.loads(seen[0].content)
    assert body["space"]["training.lr"] == {
        "type": "float",
        "low": 0.0001,
        "high": 0.1,
        "log": True,
    }
    assert body["max_trials"] == 3


def test_follow_on_a_pipe_prints_a_line_per_trial_change_and_the_best(
    serve: Callable[..., None], search_file: Path
) -> None:
    running = search_json(trials=[trial_json(0, "running")])
    two = search_json(trials=[trial_json(0), trial_json(1, "running")])
    serve(api(running, running, two, SUCCEEDED))
    result = run("searches", "create", str(search_file), "--follow")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "search s1 queued: http://tas.test/ui/searches/s1"
    trial_lines = [ln for ln in lines if ln.startswith("trial ")]
    assert trial_lines == [
        "trial 0 running (job job0) training.lr=0.01 model.hidden=[128]",
        "trial 0 complete val_accuracy=0.9 after 3 epochs",
        "trial 1 running (job job1) training.lr=0.02 model.hidden=[128]",
        "trial 1 pruned val_accuracy=0.4 after 1 epoch",
        "trial 2 complete val_accuracy=0.92 after 3 epochs",
    ]
    assert "search s1 succeeded: 3 trials" in result.stdout
    assert "best: trial 2: val_accuracy=0.92 (job job2) training.lr=0.03" in result.stdout
    assert "registered model: iris-best v1" in result.stdout
    assert "\x1b[" not in result.stdout


def test_follow_on_a_terminal_ends_with_the_trials_table(
    serve: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_cli, "_tty", lambda: True)
    serve(api(search_json(), SUCCEEDED))
    result = run("searches", "get", "s1", "--follow")
    assert result.exit_code == 0, result.output
    assert "training.lr" in result.stdout and "model.hidden" in result.stdout
    assert "pruned" in result.stdout and "2 *" in result.stdout  # the best trial marked
    assert "registered model: iris-best v1" in result.stdout


@pytest.mark.parametrize(("status", "code"), [("failed", 1), ("cancelled", 2)])
def test_the_exit_code_is_the_searchs(serve: Callable[..., None], status: str, code: int) -> None:
    error = {"type": "TrialsFailed", "message": "3 trials failed"} if status == "failed" else None
    serve(api(search_json(), search_json(status, error=error)))
    result = run("searches", "get", "s1", "--follow")
    assert result.exit_code == code, result.output
    assert f"search s1 {status}" in result.stderr
    assert ("TrialsFailed: 3 trials failed" in result.stderr) == (status == "failed")
    assert "best so far: trial 0" in result.stderr
    serve(api(search_json(status)))
    as_json = run("searches", "get", "s1", "-f", "-o", "json")
    assert as_json.exit_code == code and json.loads(as_json.stdout)["status"] == status


def test_ctrl_c_detaches_and_says_how_to_reattach(serve: Callable[..., None]) -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return httpx.Response(200, json=search_json())

    serve(handler)
    result = run("searches", "get", "s1", "--follow")
    assert result.exit_code == 130
    assert "detached: search s1 keeps running" in result.stderr
    assert "tas searches get s1 --follow" in result.stderr


def test_get_says_why_no_trial_starts(serve: Callable[..., None]) -> None:
    serve(api(search_json(waiting_for="the tenant's job limit (4 running)")))
    result = run("searches", "get", "s1")
    assert result.exit_code == 0, result.output
    assert "waiting for" in result.stdout and "the tenant's job limit (4 running)" in result.stdout


def test_get_shows_the_facts_the_trials_and_the_importances(serve: Callable[..., None]) -> None:
    serve(api(SUCCEEDED))
    result = run("searches", "get", "s1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "maximize val_accuracy" in out and "tpe (seed 1)" in out and "median" in out
    assert "3/4: 0 running, 2 complete, 1 pruned, 0 failed" in out
    assert "iris-best v1" in out
    assert "0.4 (last)" in out  # a pruned trial's last reported value, marked as such
    assert "0.750" in out and "importance" in out
    as_json = run("searches", "get", "s1", "-o", "json")
    assert json.loads(as_json.stdout) == SUCCEEDED


def test_list_and_cancel(serve: Callable[..., None]) -> None:
    seen: list[httpx.Request] = []
    serve(api(SUCCEEDED, seen=seen))
    listed = run("searches", "list", "--status", "succeeded", "--status", "failed")
    assert listed.exit_code == 0, listed.output
    (row,) = [ln for ln in listed.stdout.splitlines() if "s1" in ln]
    assert "lr-search" in row and "succeeded" in row and "val_accuracy=0.92" in row
    assert seen[-1].url.params.get_list("status") == ["succeeded", "failed"]
    as_json = run("searches", "list", "-o", "json")
    assert [s["id"] for s in json.loads(as_json.stdout)] == ["s1"]
    cancelled = run("searches", "cancel", "s1")
    assert cancelled.stdout == "cancel requested: search s1 is cancelled\n"


def test_errors_exit_3_with_the_apis_message(
    serve: Callable[..., None], search_file: Path, tmp_path: Path
) -> None:
    problems = [{"loc": ["body", "space", "training.lr"], "msg": "low must be > 0", "type": "x"}]
    serve(lambda request: httpx.Response(422, json={"detail": problems}))
    result = run("searches", "create", str(search_file))
    assert result.exit_code == 3 and "422 space.training.lr: low must be > 0" in result.stderr
    serve(lambda request: httpx.Response(404, json={"detail": "search nope not found"}))
    missing = run("searches", "get", "nope", "--follow")
    assert missing.exit_code == 3 and "404 search nope not found" in missing.stderr
    (tmp_path / "list.json").write_text("[1]")
    listed = run("searches", "create", str(tmp_path / "list.json"))
    assert listed.exit_code == 3 and "not a search (a mapping)" in listed.stderr

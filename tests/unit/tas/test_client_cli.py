"""`tas jobs ...` on a scripted API (httpx's MockTransport behind tas.client): what the follower
prints, on a pipe and on a terminal, and the exit codes (0 succeeded, 1 failed, 2 cancelled,
3 usage or connection error, 130 detached). The real server's side is
tests/integration/test_client.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tas import client_cli
from tas.cli import cli
from tas.client import Client
from tests.unit.tas.client.test_client import job_json, sse, stream

SUCCEEDED = job_json(
    "succeeded",
    stage=None,
    latest_metrics={"train_loss": 0.2, "val_loss": 0.3, "val_accuracy": 0.9},
    best_metrics={"val_loss": 0.25, "val_accuracy": 0.93},
    result={"model": {"name": "iris", "version": 1}},
    progress={"epoch": 3, "epochs": 3, "step": 8, "steps_per_epoch": 8, "fraction": 1.0},
)
FAILED = job_json(
    "failed",
    error={"type": "NonFiniteLoss", "message": "loss is nan", "hint": "lower lr", "stage": "train"},
)


def api(
    end: dict[str, Any], *, events: Callable[[], httpx.Response] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    """A server whose job j1 runs one epoch, logs a line, and ends as `end`."""

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/jobs":
            return httpx.Response(201, json=job_json("queued", stage=None, progress=None))
        if path == "/jobs/j1/events":
            if events is not None:
                return events()
            return stream(sse(1, job_json()), sse(2, end))
        if path == "/jobs/j1/logs":
            after = int(request.url.params.get("after", 0))
            line = {"id": 1, "message": "epoch 1 done", "level": "info", "attempt": 1}
            items = [line] if after < 1 else []
            return httpx.Response(200, json={"items": items, "next_after": 1 if items else after})
        if path == "/jobs/j1":
            return httpx.Response(200, json=end)
        return httpx.Response(404, json={"detail": f"no route {path}"})

    return handle


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
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
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text("name: iris\ndataset: {name: iris}\nmodel: {arch: mlp}\n")
    return path


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def test_follow_prints_the_id_the_log_the_epochs_and_the_final_table(
    serve: Callable[..., None], spec: Path
) -> None:
    serve(api(SUCCEEDED))
    result = run("jobs", "submit", str(spec))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "job j1 queued: http://tas.test/ui/jobs/j1"
    assert "epoch 1 done" in result.stdout
    assert any(ln.startswith("running train epoch 1/3 step 2/8") for ln in lines), lines
    assert "val_accuracy (monitored)" in result.stdout
    assert "registered model: iris v1" in result.stdout
    assert result.stdout.count("epoch 1 done") == 1


def test_the_live_view_on_a_terminal_ends_with_the_same_table(
    serve: Callable[..., None], spec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_cli, "_tty", lambda: True)
    serve(api(SUCCEEDED))
    result = run("jobs", "submit", str(spec), "--follow")
    assert result.exit_code == 0, result.output
    assert "epoch 1 done" in result.stdout and "registered model: iris v1" in result.stdout


@pytest.mark.parametrize(
    ("end", "code", "said"),
    [
        (FAILED, 1, "NonFiniteLoss: loss is nan"),
        (job_json("cancelled"), 2, "job j1 cancelled"),
    ],
)
def test_the_exit_code_is_the_jobs(
    serve: Callable[..., None], spec: Path, end: dict[str, Any], code: int, said: str
) -> None:
    serve(api(end))
    result = run("jobs", "submit", str(spec))
    assert result.exit_code == code, result.output
    assert said in result.stderr
    assert run("jobs", "wait", "j1").exit_code == code


def test_ctrl_c_detaches_and_says_how_to_reattach(serve: Callable[..., None], spec: Path) -> None:
    def interrupted() -> httpx.Response:
        raise KeyboardInterrupt

    serve(api(SUCCEEDED, events=interrupted))
    result = run("jobs", "submit", str(spec))
    assert result.exit_code == 130
    assert "detached: job j1 keeps running" in result.stderr
    assert "tas jobs wait j1" in result.stderr and "tas jobs logs j1 -f" in result.stderr


def test_detach_prints_only_the_id(serve: Callable[..., None], spec: Path) -> None:
    serve(api(SUCCEEDED))
    result = run("jobs", "submit", str(spec), "--detach")
    assert (result.exit_code, result.stdout) == (0, "j1\n")


def test_json_output_is_the_apis_job(serve: Callable[..., None]) -> None:
    serve(api(SUCCEEDED))
    result = run("jobs", "get", "j1", "-o", "json")
    assert result.exit_code == 0 and json.loads(result.stdout) == SUCCEEDED


def test_a_refused_spec_and_a_usage_error_exit_3(
    serve: Callable[..., None], spec: Path, tmp_path: Path
) -> None:
    problems = [{"loc": ["body", "training", "lr"], "msg": "must be > 0", "type": "x"}]
    serve(lambda request: httpx.Response(422, json={"detail": problems}))
    result = run("jobs", "submit", str(spec))
    assert result.exit_code == 3 and "422 training.lr: must be > 0" in result.stderr
    assert run("jobs", "get").exit_code == 3
    assert run("jobs", "list", "-o", "xml").exit_code == 3
    (tmp_path / "list.yaml").write_text("- 1\n")
    listed = run("jobs", "submit", str(tmp_path / "list.yaml"))
    assert listed.exit_code == 3 and "not a job spec" in listed.stderr


def test_logs_follow_prints_each_line_once_and_exits_with_the_jobs_code(
    serve: Callable[..., None],
) -> None:
    serve(api(FAILED))
    result = run("jobs", "logs", "j1", "-f")
    assert result.exit_code == 1
    assert result.stdout.count("epoch 1 done") == 1


def test_log_lines_on_the_event_stream_are_printed_once(
    serve: Callable[..., None], spec: Path
) -> None:
    """A server that streams the log: the same line from the stream and the endpoint is one."""
    line = {"id": 1, "message": "epoch 1 done", "level": "warning", "attempt": 1}
    end = b'event: end\ndata: {"status": "succeeded"}\n\n'
    events = lambda: stream(sse(5, job_json()), sse(6, line, event="log"), sse(7, SUCCEEDED), end)  # noqa: E731
    serve(api(SUCCEEDED, events=events))
    result = run("jobs", "submit", str(spec))
    assert result.exit_code == 0, result.output
    assert result.stdout.count("epoch 1 done") == 1 and "WARNING epoch 1 done" in result.stdout


def test_the_list_table_keeps_whole_ids_on_a_pipe(serve: Callable[..., None]) -> None:
    long_id = "3473b4bcabc54c7f8498caadc6f46475"
    page = {"items": [{**SUCCEEDED, "id": long_id, "name": "a-rather-long-job-name"}]}
    serve(lambda request: httpx.Response(200, json={**page, "next_cursor": None}))
    result = run("jobs", "list")
    assert result.exit_code == 0, result.output
    (row,) = [ln for ln in result.stdout.splitlines() if long_id in ln]
    assert "a-rather-long-job-name" in row and "succeeded" in row


def test_list_sorts_on_the_server(serve: Callable[..., None]) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"items": [SUCCEEDED], "next_cursor": None})

    serve(handler)
    assert run("jobs", "list", "--sort", "-name").exit_code == 0
    assert run("jobs", "list").exit_code == 0
    assert seen[0].url.params["sort"] == "-name" and "sort" not in seen[1].url.params

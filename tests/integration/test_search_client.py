"""`tas searches` and `client.searches` against a real `tas serve` (its API, its search
controller and its embedded worker): the CLI runs as a user runs it, a subprocess whose standard
output is a pipe (so: a line per trial that changes state), and a followed search's exit code is
the search's: 0 succeeded, 2 cancelled, 3 a refused search."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tas.client import Client
from tests.helpers.specs import digits_mlp_spec, iris_spec
from tests.helpers.stack import Stack, embedded_stack

pytestmark = pytest.mark.integration

LRS = [0.01, 0.05]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with embedded_stack(tmp_path_factory.mktemp("search-client")) as s:
        yield s


def tas(stack: Stack, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tas", *args],
        env={**stack.env, "TAS_URL": stack.base_url},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def grid_search(name: str, **spec_training: Any) -> dict[str, Any]:
    return {
        "name": name,
        "spec": iris_spec(
            name=f"{name}-trial",
            dataset={"val_fraction": 0.2},
            training={"epochs": 2, "seed": 1, **spec_training},
        ),
        "space": {"training.lr": {"type": "categorical", "choices": LRS}},
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "sampler": {"type": "grid", "seed": 1},
        "pruner": {"type": "none"},
        "max_trials": len(LRS),
        "max_concurrent": 1,
        "model_name": f"{name}-best",
    }


def test_create_follow_prints_each_trial_and_the_best_and_exits_0(
    stack: Stack, tmp_path: Path
) -> None:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(grid_search("cli-grid")))
    run = tas(stack, "searches", "create", str(path), "--follow")
    assert run.returncode == 0, run.stdout + run.stderr + stack.logs()
    lines = run.stdout.splitlines()
    first = lines[0].split()
    assert first[0] == "search" and lines[0].endswith(f"/ui/searches/{first[1]}"), lines[0]
    search_id = first[1]
    for number in range(len(LRS)):
        # Each trial at least once finished; "running" may fall between two reads of a fast one.
        assert any(ln.startswith(f"trial {number} complete val_accuracy=") for ln in lines), lines
    assert f"search {search_id} succeeded: {len(LRS)} trials" in run.stdout
    assert any(ln.startswith("best: trial ") for ln in lines), run.stdout
    assert "registered model: cli-grid-best v1" in run.stdout
    assert "\x1b[" not in run.stdout

    got = tas(stack, "searches", "get", search_id, "-o", "json")
    assert got.returncode == 0, got.stderr
    search = json.loads(got.stdout)
    assert search["status"] == "succeeded"
    assert sorted(t["params"]["training.lr"] for t in search["trials"]) == LRS
    listed = tas(stack, "searches", "list", "--status", "succeeded", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert search_id in [s["id"] for s in json.loads(listed.stdout)]
    table = tas(stack, "searches", "get", search_id)
    assert (
        table.returncode == 0
        and "training.lr" in table.stdout
        and "cli-grid-best v1" in table.stdout
    )

    # The same search through the Python client; each trial is a job that knows its search.
    with Client(stack.base_url) as client:
        again = client.searches.get(search_id).wait(timeout=5)
        assert again.best is not None and again.best.job_id is not None
        assert again.model == ("cli-grid-best", 1)
        trial_job = client.jobs.get(again.best.job_id)
        assert (trial_job.search_id, trial_job.trial_number) == (search_id, again.best.number)


def test_cancel_stops_a_followed_search_and_its_follower_exits_2(
    stack: Stack, tmp_path: Path
) -> None:
    long = digits_mlp_spec("cancel-trial", epochs=500)
    body = {
        **grid_search("cli-cancel"),
        "spec": long,
        "space": {"training.lr": {"type": "categorical", "choices": [0.001, 0.002]}},
    }
    path = tmp_path / "search.json"
    path.write_text(json.dumps(body))
    created = tas(stack, "searches", "create", str(path))
    assert created.returncode == 0, created.stderr
    search_id = created.stdout.strip()
    follower = subprocess.Popen(
        [sys.executable, "-m", "tas", "searches", "get", search_id, "--follow"],
        env={**stack.env, "TAS_URL": stack.base_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            search = stack.http.get(f"/searches/{search_id}").json()
            if any(t["state"] == "running" and t["epochs"] >= 1 for t in search["trials"]):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"no trial trained an epoch: {search}\n{stack.logs()}")
        cancelled = tas(stack, "searches", "cancel", search_id)
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout.startswith(f"cancel requested: search {search_id} is ")
        out, err = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 2, out + err + stack.logs()
    assert f"search {search_id} cancelled" in err
    assert "trial 0 running" in out
    # The running trial's job was cancelled with it.
    job_id = stack.http.get(f"/searches/{search_id}").json()["trials"][0]["job_id"]
    assert stack.wait(job_id, timeout=60)["status"] == "cancelled"


def test_a_space_that_can_make_an_invalid_spec_exits_3_naming_the_path(
    stack: Stack, tmp_path: Path
) -> None:
    body = grid_search("cli-bad")
    body["sampler"] = {"type": "random", "seed": 1}
    body["space"] = {"training.lr": {"type": "float", "low": -1.0, "high": 0.1}}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(body))
    run = tas(stack, "searches", "create", str(path))
    assert run.returncode == 3, run.stdout + run.stderr
    assert "error: 422" in run.stderr and "training.lr" in run.stderr

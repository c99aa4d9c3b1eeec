"""Each job's log as the real processes write it (`tas serve` with its embedded worker): a job that
diverges has its stages and its traceback in GET /jobs/{id}/logs, one that succeeds its stages and
epochs with the run and worker that wrote them, and a cancelled job resumed says where its second
run took over, followed page by page with the cursor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.specs import at_epoch, digits_mlp_spec, iris_spec
from tests.helpers.stack import Stack, embedded_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with embedded_stack(tmp_path_factory.mktemp("job-logs")) as s:
        yield s


def follow(stack: Stack, job_id: str, page: int = 7) -> list[dict[str, Any]]:
    """The whole log, `page` lines a call, each call from the cursor the last one answered."""
    lines: list[dict[str, Any]] = []
    after: int | None = None
    while True:
        params: dict[str, int] = {"limit": page} | ({"after": after} if after is not None else {})
        r = stack.http.get(f"/jobs/{job_id}/logs", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        lines += body["items"]
        if not body["items"]:
            return lines
        assert body["next_after"] == body["items"][-1]["id"]
        after = body["next_after"]


def messages(lines: list[dict[str, Any]]) -> list[str]:
    return [line["message"] for line in lines]


def test_job_logs_in_the_real_processes(stack: Stack, tmp_path: Path) -> None:
    diverges = {
        "name": "diverge",
        "dataset": {"name": "linear", "val_fraction": 0},
        "model": {"arch": "linear"},
        "training": {"epochs": 50, "batch_size": 2, "optimizer": "sgd", "lr": 1.0},
    }
    bad = stack.submit(diverges)["id"]
    good = stack.submit(iris_spec(name="iris-logs", training={"epochs": 3}))["id"]

    failed = stack.wait(bad, timeout=180)
    assert failed["status"] == "failed" and failed["error"]["type"] == "NonFiniteLoss"
    assert "Traceback" not in str(failed["error"])  # the error stays short
    lines = follow(stack, bad)
    text = messages(lines)
    assert text[0].startswith("run 1 started on worker "), text
    assert "stage collect started" in text and "stage train started" in text
    failure = next(line for line in lines if line["message"].startswith("failed in stage train"))
    assert failure["level"] == "error"
    assert "Traceback (most recent call last)" in failure["message"]
    assert "NonFiniteLoss" in failure["message"]
    assert text[-1] == "run 1 failed"
    ids = [line["id"] for line in lines]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    done = stack.wait(good, timeout=180)
    assert done["status"] == "succeeded", stack.logs()
    lines = follow(stack, good)
    text = messages(lines)
    for stage in ("collect", "preprocess", "train", "evaluate", "register"):
        assert f"stage {stage} started" in text
        assert any(t.startswith(f"stage {stage} finished in ") for t in text), text
    assert [t.split(":")[0] for t in text if t.startswith("epoch ")] == [
        "epoch 1/3",
        "epoch 2/3",
        "epoch 3/3",
    ]
    assert text[-1].startswith("succeeded after 3 epochs: model iris-logs version 1")
    workers = {line["worker"] for line in lines}
    assert {line["attempt"] for line in lines} == {1} and len(workers) == 1 and None not in workers
    plain = stack.http.get(f"/jobs/{good}/logs", params={"format": "text"})
    assert plain.status_code == 200 and "stage train started" in plain.text
    assert plain.headers["x-next-after"] == str(lines[-1]["id"])

    # Cancelled mid-training, resumed: the second run says where it took over.
    job = stack.submit(digits_mlp_spec("resumed", epochs=8))["id"]
    stack.wait(job, predicate=at_epoch(2), timeout=180)
    assert stack.http.post(f"/jobs/{job}/cancel").status_code == 200
    assert stack.wait(job, timeout=60)["status"] == "cancelled"
    assert stack.http.post(f"/jobs/{job}/resume").status_code == 200
    assert stack.wait(job, timeout=300)["status"] == "succeeded", stack.logs()
    lines = follow(stack, job, page=50)
    first = [line["message"] for line in lines if line["attempt"] == 1]
    second = [line["message"] for line in lines if line["attempt"] == 2]
    assert any(m.startswith("cancelled: run 1 stopped after epoch") for m in first), first
    assert second[0].startswith("run 2 started on worker "), second
    assert "before it, run 1: cancelled" in second[0], second
    assert any(m.startswith("resumed from the checkpoint after epoch") for m in second), second

"""A cancel is bounded whatever the step: a job in a training step far longer than
TAS_CANCEL_GRACE_S is cancelled within the grace (and a few seconds), through the real API and
worker on both stacks, and its worker runs the next job."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.lifecycle import _alive, digits, service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GRACE_S = 1.0


@pytest.fixture(params=["embedded", "redis_pg"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def wide_cnn(name: str) -> dict[str, Any]:
    """Two steps an epoch on digits; the first (1024 images through a 1024→1024 convolution) is
    about 0.9 TFLOP, several seconds on one CPU thread (the tests run with OMP_NUM_THREADS=1)."""
    return {
        "name": name,
        "dataset": {"name": "digits", "val_fraction": 0.15},
        "model": {"arch": "cnn", "channels": [1024, 1024]},
        "training": {"epochs": 20, "batch_size": 1024, "optimizer": "sgd", "lr": 0.01, "seed": 1},
        "checkpoint": {"every_epochs": 1, "keep_last": 2},
    }


def epoch_rows(stack: Any, job_id: str) -> list[dict[str, Any]]:
    rows = stack.http.get(f"/jobs/{job_id}/metrics").json()
    return [r for r in rows if r.get("step") is None]


@pytest.mark.timeout(420)
def test_cancel_does_not_wait_for_a_long_step(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    # The step limit set well above this job's (whatever the default): the step must be slow.
    with service(
        request, tmp_path, kind, TAS_CANCEL_GRACE_S=str(GRACE_S), TAS_MAX_STEP_TFLOP="100"
    ) as svc:
        st = svc.stack
        job_id = st.submit(wide_cnn("wide"))["id"]
        # Epoch 1 done (its row and checkpoint written): the loop is in epoch 2's first step.
        st.wait(
            job_id,
            predicate=lambda j: (
                epoch_rows(st, job_id) and st.http.get(f"/jobs/{job_id}/checkpoints").json()
            ),
            timeout=240,
        )
        running = st.job(job_id)
        assert running["status"] == "running", running
        owner = int(running["attempt_log"][-1]["owner"].split("/")[-2])

        t0 = time.monotonic()
        assert st.http.post(f"/jobs/{job_id}/cancel").status_code == 200
        while st.job(job_id)["status"] == "running":
            assert time.monotonic() - t0 < GRACE_S + 3.0, st.logs()
            time.sleep(0.05)
        took = time.monotonic() - t0
        done = st.job(job_id)
        assert done["status"] == "cancelled", (done, st.logs())
        print(f"{kind}: cancelled {took:.2f} s after the request (grace {GRACE_S} s)")

        # Settled as a cooperative cancel: one run, ended `cancelled`, its open stage too.
        assert [e["outcome"] for e in done["attempt_log"]] == ["cancelled"], done["attempt_log"]
        assert done["attempts"] == 1
        train = [s for s in done["stages"] if s["name"] == "train"]
        assert [s["status"] for s in train] == ["cancelled"], done["stages"]
        assert not [s for s in done["stages"] if s["status"] == "running"]
        # What it had written is kept; the abandoned step wrote nothing after it.
        assert [r["epoch"] for r in epoch_rows(st, job_id)] == [1]
        assert st.http.get(f"/jobs/{job_id}/checkpoints").json()
        lines = [x["message"] for x in st.http.get(f"/jobs/{job_id}/logs").json()["items"]]
        assert any("did not end within 1 s (TAS_CANCEL_GRACE_S)" in x for x in lines), lines

        # The step was abandoned with its pool child, not finished.
        deadline = time.monotonic() + 5
        while _alive(owner) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(owner), f"pool child {owner} still alive\n{st.logs()}"
        assert "the step in progress did not end within 1.0 s of the cancel" in svc.worker_log()

        # The worker lives on: the next job runs to the end in a fresh child.
        nxt = st.wait(st.submit(digits("next", 2))["id"], timeout=120)
        assert nxt["status"] == "succeeded", (nxt, st.logs())
        assert svc.runner.popen.poll() is None
        # The main process saw its child end after the job was settled: the message is done
        # (acknowledged, never handed back for a second run), with no WorkerLostError reported.
        deadline = time.monotonic() + 20
        ended = f"job {job_id}: pool child {owner} ended"
        while ended not in svc.worker_log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert f"{ended} with exit code 75 after the job was cancelled" in svc.worker_log(), (
            st.logs()
        )
        assert "WorkerLostError" not in svc.worker_log()
        time.sleep(1.0)  # a message handed back would have been delivered by now
        assert f"dropped message for job {job_id}" not in svc.worker_log()
        again = st.job(job_id)
        assert again["status"] == "cancelled"
        assert again["attempts"] == 1 and len(again["attempt_log"]) == 1, again

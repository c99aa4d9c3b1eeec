"""Two jobs never share a GPU, through the real worker: a worker that sees one GPU (a stand-in
`nvidia-smi` on its PATH lists it; no driver answers, so the jobs, asking for `auto`, then train on
the CPU) runs two jobs at once only as far as that GPU allows: each holds it for its run, and the
second is claimed only once the first has let it go."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from tests.helpers.specs import digits_mlp_spec
from tests.helpers.stack import Stack, embedded_stack

pytestmark = pytest.mark.integration

FAKE_SMI = """#!/bin/sh
echo "0, GPU-00000000-fake-0000-0000-000000000000, Stand-in GPU, 16384"
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("slots")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    with embedded_stack(tmp, serve_args=("--concurrency", "2"), PATH=path) as s:
        yield s


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_two_jobs_on_a_one_gpu_worker_hold_it_in_turn(stack: Stack) -> None:
    deadline = time.monotonic() + 60
    while not (workers := stack.http.get("/workers").json()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert any(d["id"] == "cuda:0" for w in workers for d in w["devices"]), workers
    jobs = [stack.submit(digits_mlp_spec(f"slot-{i}", epochs=6))["id"] for i in range(2)]
    done = [stack.wait(j, timeout=300) for j in jobs]
    assert all(d["status"] == "succeeded" for d in done), (done, stack.logs())
    runs = sorted(
        (when(d["attempt_log"][-1]["started_at"]), when(d["attempt_log"][-1]["ended_at"]))
        for d in done
    )
    (_, first_end), (second_start, _) = runs
    assert second_start >= first_end, runs  # claimed only after the first run let the GPU go
    assert "waiting for 1 free GPU(s)" in stack.logs(), stack.logs()

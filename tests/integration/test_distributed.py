"""Data-parallel jobs (resources.processes: 2) on the CPU with gloo, through the real API, the
embedded worker and torchrun: they train like one process with the same global batch, report one
row per epoch, keep their replicas identical, resume after a kill -9 to the weights of an
uninterrupted run, stop every process on a cancel, and fail an attempt whose process raises or
hangs with that process's traceback, leaving no process behind."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy.orm import Session, sessionmaker

from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store import leases as lease_store
from tas.store.migrate import upgrade
from tests.helpers.specs import at_epoch, digits_mlp_spec
from tests.helpers.stack import Stack, embedded_stack
from worker import claim, group

pytestmark = pytest.mark.integration

#: The final training loss of 2 processes against 1 with the same global batch: the same batches
#: and the same mean gradients, only summed in another order (measured: ~1e-7 relative).
LOSS_RTOL = 1e-3


def spec(name: str, processes: int, **training: Any) -> dict[str, Any]:
    """Digits, an MLP without dropout (each process draws its own masks), a global batch of 64."""
    s = digits_mlp_spec(name, **({"epochs": 4, "batch_size": 64} | training))
    s["model"]["dropout"] = 0.0
    s["resources"] = {"processes": processes}
    return s


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with embedded_stack(tmp_path_factory.mktemp("ddp")) as s:
        yield s


def finished(stack: Stack, body: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    done = stack.wait(stack.submit(body)["id"], timeout=timeout)
    assert done["status"] == "succeeded", (done, stack.logs())
    return done


@pytest.fixture(scope="module")
def one(stack: Stack) -> dict[str, Any]:
    return finished(stack, spec("one", 1))


@pytest.fixture(scope="module")
def two(stack: Stack) -> dict[str, Any]:
    return finished(stack, spec("two", 2))


#: Long enough to be interrupted mid-run (90 steps an epoch), short enough to finish in seconds.
LONG = {"epochs": 12, "batch_size": 16}


@pytest.fixture(scope="module")
def long_two(stack: Stack) -> dict[str, Any]:
    """The uninterrupted 2-process run the interrupted ones must end like."""
    return finished(stack, spec("long", 2, **LONG))


def weights(stack: Stack, job_id: str) -> dict[str, torch.Tensor]:
    path = stack.data_dir / "artifacts" / "jobs" / job_id / "model" / "model.safetensors"
    return load_file(str(path))


def log_text(stack: Stack, job_id: str) -> str:
    items = stack.http.get(f"/jobs/{job_id}/logs", params={"limit": 500}).json()["items"]
    return "\n".join(i["message"] for i in items)


def group_pids(stack: Stack, job_id: str) -> list[int]:
    """torchrun's pid and every rank's, as the job's log names them."""
    text = log_text(stack, job_id)
    launcher = [int(p) for p in re.findall(r"through torchrun \(pid (\d+)\)", text)]
    ranks = [int(p) for m in re.findall(r"pids \[([\d, ]+)\]", text) for p in m.split(",")]
    return launcher + ranks


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose (it holds nothing but its exit status)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
    """Seconds until `check()` held; fails after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(step)
    return time.monotonic() - start


def train_outputs(stack: Stack, job_id: str) -> dict[str, Any]:
    stages = stack.http.get(f"/jobs/{job_id}").json()["stages"]
    train = [s for s in stages if s["name"] == "train"][-1]
    return dict(train["outputs"])


def test_two_processes_report_one_row_per_epoch_and_keep_identical_replicas(
    stack: Stack, two: dict[str, Any]
) -> None:
    rows = stack.http.get(f"/jobs/{two['id']}/metrics").json()
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]  # one row per epoch, not one per process
    dist = train_outputs(stack, two["id"])["distributed"]
    assert dist["processes"] == 2 and dist["backend"] == "gloo"
    assert len(dist["weights_sha256"]) == 2 and dist["identical_weights"] is True
    assert len(set(dist["weights_sha256"])) == 1
    # the registered model serves like any other
    r = stack.http.post("/predict", json={"model": two["id"], "inputs": [[[0.0] * 8] * 8]})
    assert r.status_code == 200, r.text
    pids = group_pids(stack, two["id"])
    assert len(pids) == 3
    took = wait_until(lambda: not any(alive(p) for p in pids), timeout=15)
    print(f"group gone {took:.2f} s after the job succeeded")


def test_two_processes_train_like_one_with_the_same_global_batch(
    one: dict[str, Any], two: dict[str, Any]
) -> None:
    a, b = one["latest_metrics"]["train_loss"], two["latest_metrics"]["train_loss"]
    assert abs(a - b) <= LOSS_RTOL * abs(a), (a, b)
    assert abs(one["latest_metrics"]["val_loss"] - two["latest_metrics"]["val_loss"]) <= (
        LOSS_RTOL * one["latest_metrics"]["val_loss"]
    )


def test_a_killed_worker_resumes_the_group_to_the_uninterrupted_weights(
    stack: Stack, long_two: dict[str, Any]
) -> None:
    job = stack.submit(spec("killed", 2, **LONG))["id"]
    running = stack.wait(job, predicate=at_epoch(3), timeout=200)
    pids = group_pids(stack, job)
    assert len(pids) == 3, log_text(stack, job)
    owner = running["attempt_log"][-1]["owner"]  # host/pid/token of the pool child
    os.kill(int(owner.split("/")[1]), signal.SIGKILL)
    wait_until(lambda: not any(alive(p) for p in pids), timeout=10)  # no orphan of the group
    done = stack.wait(job, timeout=300)
    assert done["status"] == "succeeded", (done, stack.logs())
    assert len(done["attempt_log"]) >= 2
    assert "resumed from the checkpoint" in log_text(stack, job)
    a, b = weights(stack, long_two["id"]), weights(stack, job)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_to_the_run_checkpoints_the_group_and_resumes_it_to_the_same_weights(
    stack: Stack, long_two: dict[str, Any]
) -> None:
    """SIGTERM to the pool child running the job (what a warm shutdown sends): rank 0 hears of it
    through the run's stop file, every process checkpoints at the same step, the job goes back to
    the queue and resumes to the weights of the run never interrupted."""
    job = stack.submit(spec("preempted", 2, **LONG))["id"]
    running = stack.wait(job, predicate=at_epoch(3), timeout=200)
    pids = group_pids(stack, job)
    owner = running["attempt_log"][-1]["owner"]
    os.kill(int(owner.split("/")[1]), signal.SIGTERM)
    wait_until(lambda: not any(alive(p) for p in pids), timeout=30)
    done = stack.wait(job, timeout=300)
    assert done["status"] == "succeeded", (done, stack.logs())
    assert done["preemptions"] >= 1, done
    assert "preempted" in log_text(stack, job)
    # handed back by the run itself (published again at once), not found later by the reaper
    assert f"settled job {job} as requeued" in stack.logs(), stack.logs()
    a, b = weights(stack, long_two["id"]), weights(stack, job)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cancel_stops_every_process_of_the_group_within_2_seconds(stack: Stack) -> None:
    job = stack.submit(spec("cancel", 2, epochs=500, batch_size=16))["id"]
    stack.wait(job, predicate=at_epoch(1), timeout=200)
    pids = group_pids(stack, job)
    assert len(pids) == 3, log_text(stack, job)
    assert all(alive(p) for p in pids)
    r = stack.http.post(f"/jobs/{job}/cancel")
    assert r.status_code in (200, 202), r.text
    took = wait_until(lambda: not any(alive(p) for p in pids), timeout=10)
    assert took <= 2.0, f"the group took {took:.2f} s to stop"
    assert stack.wait(job, timeout=30)["status"] == "cancelled"


# -- failures, on a stack whose collectives time out quickly ------------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("ddp-timeout")
    with embedded_stack(tmp, TAS_DISTRIBUTED_TIMEOUT_S="4", TAS_MAX_ATTEMPTS="1") as s:
        yield s


def test_a_hung_process_fails_the_attempt_with_its_peers_traceback(strict: Stack) -> None:
    """A rank that stops answering (SIGSTOP) leaves its peer waiting in a collective: the wait is
    bounded, the peer raises, the attempt fails with that traceback, nothing of the group stays."""
    job = strict.submit(spec("hung", 2, epochs=500, batch_size=16))["id"]
    strict.wait(job, predicate=at_epoch(1), timeout=200)
    pids = group_pids(strict, job)
    assert len(pids) == 3, log_text(strict, job)
    os.kill(pids[-1], signal.SIGSTOP)  # rank 1
    done = strict.wait(job, timeout=60)
    assert done["status"] == "failed", done
    assert "process 0 of 2" in done["error"]["message"], done["error"]
    text = log_text(strict, job)
    assert "Traceback" in text and "process 0 of 2" in text, text
    wait_until(lambda: not any(alive(p) for p in pids), timeout=10)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path / "var", device="cpu", heartbeat_seconds=0.2)
    s.ensure_dirs()
    upgrade(s.resolved_database_url)
    return s


def test_a_process_that_raises_fails_the_run_with_its_traceback_and_no_survivor(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s:
        job = job_store.create_job(s, {"name": "g"}, tenant="default", max_attempts=1)
        s.commit()
        lease = lease_store.claim(s, job.id, "host/1/abcd", 60.0)
        assert lease is not None
        s.commit()
    launched: list[int] = []
    ended = group.run_group(
        {"job_id": job.id, "spec": {}, "settings": claim.settings_payload(settings)},
        processes=2,
        settings=settings,
        sessions=sessions,
        lease=lease,
        preempt=_Never(),
        on_launch=launched.append,
        entry="tests.helpers.raising_rank",
    )
    assert ended.kind == "failed", ended
    assert ended.error["message"] == "process 1 of 2: rank 1 failed on purpose", ended.error
    assert "Traceback" in ended.traceback and "raising_rank.py" in ended.traceback
    assert launched and not alive(launched[0])
    assert not list((settings.resolved_local_cache_dir / "groups").iterdir())


class _Never:
    def is_set(self) -> bool:
        return False

"""`tas.client` and the `tas jobs|datasets|models` verbs against a real `tas serve` (the embedded
stack: the verbs are the same HTTP calls on either, and one stack keeps the module short).

The CLI runs as a user runs it, a subprocess with standard output a pipe (so: plain lines), and
its exit code is the job's: 0 succeeded, 1 failed, 2 cancelled. A TCP proxy that cuts every event
stream after a few kilobytes stands in for a flaky network or a proxy's idle timeout: the
follower must reconnect and still end with the job's own outcome."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from app.schemas.jobs import JobOut
from tas.client import Client, JobFailed
from tests.helpers.servers import free_port
from tests.helpers.specs import at_epoch, digits_mlp_spec, iris_spec
from tests.helpers.stack import Stack, embedded_stack

pytestmark = pytest.mark.integration

#: A spec that diverges at once: plain SGD with lr 1 on unnormalised data, batch 2.
DIVERGING = {
    "name": "diverge",
    "dataset": {"name": "linear", "val_fraction": 0},
    "model": {"arch": "linear"},
    "training": {"epochs": 50, "batch_size": 2, "optimizer": "sgd", "lr": 1.0},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with embedded_stack(tmp_path_factory.mktemp("client")) as s:
        yield s


def tas(
    stack: Stack, *args: str, url: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tas", *args],
        env={**stack.env, "TAS_URL": url or stack.base_url},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def spawn_tas(stack: Stack, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tas", *args],
        env={**stack.env, "TAS_URL": stack.base_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def job_id_of(stdout: str) -> str:
    """The id from the follower's first line, `job ID STATUS: URL`."""
    first = stdout.splitlines()[0]
    assert first.startswith("job "), stdout
    return first.split()[1]


def test_submit_follow_exits_0_with_the_final_table_and_json_has_the_documented_fields(
    stack: Stack, tmp_path: Path
) -> None:
    spec = iris_spec(
        name="cli-iris",
        dataset={"val_fraction": 0.2},
        training={"epochs": 3},
        checkpoint={"monitor": "val_accuracy"},
    )
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    run = tas(stack, "jobs", "submit", str(spec_file), "--follow")
    assert run.returncode == 0, run.stdout + run.stderr + stack.logs()
    lines = run.stdout.splitlines()
    job_id = job_id_of(run.stdout)
    assert f"{stack.base_url}/" in lines[0] and job_id in lines[0]
    # A state line per change the follower saw (a 3-epoch iris run may finish between two).
    assert any(ln.split(" ")[0] in ("queued", "running") for ln in lines[1:]), run.stdout
    assert f"job {job_id} succeeded" in run.stdout
    # The final table: each metric's final and best value, the monitored one marked.
    assert "val_accuracy (monitored)" in run.stdout
    assert "metric" in run.stdout and "final" in run.stdout and "best" in run.stdout
    assert "registered model: cli-iris v1" in run.stdout
    assert "\x1b[" not in run.stdout  # plain lines on a pipe: no colours, no redraws

    documented = set(JobOut.model_fields)
    got = tas(stack, "jobs", "get", job_id, "-o", "json")
    assert got.returncode == 0, got.stderr
    job = json.loads(got.stdout)
    assert documented <= set(job) and job["status"] == "succeeded"
    listed = tas(stack, "jobs", "list", "-o", "json", "--status", "succeeded")
    assert listed.returncode == 0, listed.stderr
    jobs = json.loads(listed.stdout)
    assert isinstance(jobs, list) and job_id in [j["id"] for j in jobs]
    assert all(documented <= set(j) for j in jobs)

    # The same job through the Python client, as a notebook would read it.
    with Client(stack.base_url) as client:
        again = client.jobs.get(job_id).wait(timeout=5)
        assert again.model == ("cli-iris", 1)
        rows = again.metrics()
        assert [r["epoch"] for r in rows] == [1, 2, 3]
        logs = again.logs()
        assert logs.items and all(line.message for line in logs.items)
        assert again.logs(after=logs.next_after).items == []
        prediction = client.models.predict("cli-iris", [[5.1, 3.5, 1.4, 0.2]])
        assert prediction.version == 1 and len(prediction.predictions) == 1

    alias = tas(stack, "models", "alias", "cli-iris", "prod", "1")
    assert alias.returncode == 0 and "cli-iris@prod -> v1" in alias.stdout, alias.stderr
    with Client(stack.base_url) as client:
        assert client.models.get("cli-iris").aliases == {"prod": 1}
    saved = tas(stack, "models", "download", "cli-iris@prod", "--out", str(tmp_path))
    assert saved.returncode == 0, saved.stderr
    assert Path(saved.stdout.strip()).name == "cli-iris-v1.safetensors"


def test_a_job_that_diverges_exits_1_with_its_error(stack: Stack, tmp_path: Path) -> None:
    spec_file = tmp_path / "diverge.json"
    spec_file.write_text(json.dumps(DIVERGING))
    run = tas(stack, "jobs", "submit", str(spec_file))
    assert run.returncode == 1, run.stdout + run.stderr + stack.logs()
    assert "failed in stage train" in run.stderr
    assert "NonFiniteLoss: " in run.stderr and "hint: " in run.stderr

    job_id = job_id_of(run.stdout)
    with Client(stack.base_url) as client, pytest.raises(JobFailed) as caught:
        client.jobs.get(job_id).wait(timeout=5)
    assert caught.value.error is not None and caught.value.error.type == "NonFiniteLoss"


def test_cancel_ends_the_follower_with_exit_2(stack: Stack, tmp_path: Path) -> None:
    spec_file = tmp_path / "long.json"
    spec_file.write_text(json.dumps(digits_mlp_spec("cli-long", epochs=500)))
    detached = tas(stack, "jobs", "submit", str(spec_file), "--detach")
    assert detached.returncode == 0, detached.stderr
    job_id = detached.stdout.strip()
    follower = spawn_tas(stack, "jobs", "logs", job_id, "-f")
    waiter = spawn_tas(stack, "jobs", "wait", job_id)
    try:
        stack.wait(job_id, predicate=at_epoch(1), timeout=120)
        cancel = tas(stack, "jobs", "cancel", job_id)
        assert cancel.returncode == 0 and "cancel requested" in cancel.stdout, cancel.stderr
        assert waiter.wait(60) == 2, waiter.communicate()
        assert "cancelled" in waiter.communicate()[1]
        assert follower.wait(60) == 2, follower.communicate()
    finally:
        for p in (follower, waiter):
            if p.poll() is None:
                p.kill()
                p.wait()
    again = tas(stack, "jobs", "cancel", job_id)
    assert again.returncode == 3 and "409" in again.stderr  # finished: nothing to cancel


class CuttingProxy:
    """A loopback TCP proxy to `upstream` that drops a connection once it has relayed `cut_after`
    bytes of an event stream's answer (any request for `/events` on that connection); other
    requests pass whole. `cuts` counts the streams it dropped."""

    def __init__(self, upstream: tuple[str, int], cut_after: int) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        self.cuts = 0
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closed:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            state = {"events": False, "relayed": 0}
            threading.Thread(target=self._requests, args=(down, up, state), daemon=True).start()
            threading.Thread(target=self._answers, args=(up, down, state), daemon=True).start()

    def _requests(self, down: socket.socket, up: socket.socket, state: dict[str, int]) -> None:
        with contextlib.suppress(OSError):
            while data := down.recv(65536):
                if b"/events" in data:
                    state["events"] = True
                up.sendall(data)
        with contextlib.suppress(OSError):
            up.shutdown(socket.SHUT_WR)

    def _answers(self, up: socket.socket, down: socket.socket, state: dict[str, int]) -> None:
        with contextlib.suppress(OSError):
            while data := up.recv(65536):
                if state["events"]:
                    room = self.cut_after - state["relayed"]
                    if len(data) >= room:
                        down.sendall(data[:room])
                        self.cuts += 1
                        break
                    state["relayed"] += len(data)
                down.sendall(data)
        for s in (down, up):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def test_a_follower_whose_stream_is_cut_reconnects_and_exits_with_the_jobs_code(
    stack: Stack, tmp_path: Path
) -> None:
    host, port = stack.base_url.removeprefix("http://").split(":")
    # An event carries the whole job: sized by a job of the same spec, each stream is cut inside
    # its second event (the headers and the first always get through, or no stream would move).
    similar = stack.http.get("/jobs", params={"limit": 1}).json()["items"]
    event_size = len(json.dumps(similar[0], separators=(",", ":"))) if similar else 2500
    proxy = CuttingProxy((host, int(port)), cut_after=500 + event_size * 3 // 2)
    try:
        spec_file = tmp_path / "cut.json"
        spec = digits_mlp_spec("cli-cut", epochs=10)
        spec["model"]["hidden"] = [32]
        spec_file.write_text(json.dumps(spec))
        t0 = time.monotonic()
        run = tas(stack, "jobs", "submit", str(spec_file), url=proxy.url)
        assert run.returncode == 0, run.stdout + run.stderr + stack.logs()
        assert proxy.cuts >= 2, proxy.cuts
        job_id = job_id_of(run.stdout)
        assert f"job {job_id} succeeded" in run.stdout
        assert "registered model: cli-cut v1" in run.stdout
        # Every epoch's log line reached the follower exactly once across the cuts (a resumed
        # stream replays what it missed, no more); live progress lines depend on timing, these
        # do not.
        for epoch in range(1, 11):
            assert run.stdout.count(f"epoch {epoch}/10:") == 1, (epoch, run.stdout)
        # Reconnecting takes its back-off, not the job's remaining time.
        assert time.monotonic() - t0 < 120
    finally:
        proxy.close()


def test_usage_and_connection_errors_exit_3(stack: Stack, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(iris_spec(training={"epochs": 0})))
    refused = tas(stack, "jobs", "submit", str(bad))
    assert refused.returncode == 3 and "training.epochs" in refused.stderr, refused.stderr
    unreachable = tas(stack, "jobs", "list", url=f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 3 and "cannot reach" in unreachable.stderr
    missing = tas(stack, "jobs", "get", "nope")
    assert missing.returncode == 3 and "404" in missing.stderr


def test_datasets_upload_prints_the_dataset(stack: Stack, tmp_path: Path) -> None:
    csv = tmp_path / "tiny.csv"
    rows = [f"{i % 7},{i % 5},{(i * 3) % 11},{'ab'[i % 2]}" for i in range(40)]
    csv.write_text("a,b,c,label\n" + "\n".join(rows) + "\n")
    up = tas(stack, "datasets", "upload", str(csv), "--target", "label", "-o", "json")
    assert up.returncode == 0, up.stderr
    ds = json.loads(up.stdout)
    assert ds["name"] == "tiny" and ds["schema"]["task"] == "classification"
    with Client(stack.base_url) as client:
        again = client.datasets.upload(csv, target="label")
        assert again.id == ds["id"] and again.schema["num_classes"] == 2
        assert ds["id"] in [d.id for d in client.datasets.list()]

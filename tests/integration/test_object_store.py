"""Workers that share nothing but Redis, PostgreSQL and an S3 store (moto's S3 server, started by
the test): the API and two `tas worker`s, each with its own data directory (scratch, caches), none
of them shared. A digits job is killed with SIGKILL mid-run on one worker, its newest checkpoint
cut off as a save killed mid-upload leaves it (objects, no manifest), and the other worker resumes
it from the checkpoint before, in the store, to the weights of a run never interrupted. The API,
which never had a local file of the model, serves it and hands out both downloads."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load

from tas.core.objstore import MANIFEST, ObjectStore, list_bundles, open_bundle, open_store
from tests.helpers.lifecycle import FAST, digits, epoch_of, running_past
from tests.helpers.s3 import S3Server
from tests.helpers.servers import PostgresServer, free_port
from tests.helpers.stack import Proc, Stack, base_env, spawn, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Both runs train the same spec (the cosine schedule spans the epochs), long enough to be killed
#: well before its end.
EPOCHS = 20


def _pgid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


class Deployment:
    """`tas serve --no-worker` and two `tas worker`s, each process with its own TAS_DATA_DIR (and
    so its own scratch, preprocessing cache and object cache), all pointed at one bucket."""

    def __init__(self, tmp: Path, common: dict[str, str]) -> None:
        self.tmp = tmp
        self.common = common
        port = free_port()
        env = base_env(tmp / "api", **common)
        self.stack = Stack("s3", f"http://127.0.0.1:{port}", env, tmp / "api", tmp)
        subprocess.run(
            [sys.executable, "-m", "tas", "migrate"],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        api = spawn("api", ["serve", "--no-worker", "--port", str(port)], env, tmp)
        self.stack.procs.append(api)
        self.workers = [self.start_worker(name) for name in ("wa", "wb")]
        wait_http(self.stack, api)

    def data_dir(self, name: str) -> Path:
        return self.tmp / name

    def start_worker(self, name: str) -> Proc:
        env = base_env(self.data_dir(name), **self.common)
        args = ["worker", "--queues", "default,cpu", "--concurrency", "1"]
        proc = spawn(name, [*args, "--hostname", f"{name}@%h"], env, self.tmp)
        self.stack.procs.append(proc)
        return proc

    def running(self, job: dict[str, Any]) -> Proc:
        """The worker whose pool child holds the job's current run (owner = host/pid/token)."""
        pid = int(job["attempt_log"][-1]["owner"].split("/")[1])
        group = _pgid(pid)
        found = [w for w in self.workers if w.popen.pid in (pid, group)]
        assert found, (job["attempt_log"], [w.popen.pid for w in self.workers], group)
        return found[0]


@pytest.fixture
def deployment(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    s3: S3Server,
    redis_url: str,
    postgres_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Deployment, ObjectStore]]:
    url = f"s3://{s3.make_bucket()}/tas"
    common = {
        **FAST,
        **s3.env,
        "TAS_DATABASE_URL": postgres_server.create_database(),
        "TAS_BROKER_URL": redis_url,
        "TAS_ARTIFACT_URL": url,
        "TAS_MAX_ATTEMPTS": "3",
    }
    for key, value in s3.env.items():  # this process reads the bucket too
        monkeypatch.setenv(key, value)
    d = Deployment(tmp_path, common)
    try:
        yield d, open_store(url)
    finally:
        d.stack.close()


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def stored_weights(store: ObjectStore, job_id: str) -> dict[str, torch.Tensor]:
    return load(open_bundle(store, f"jobs/{job_id}/model").read_bytes("model.safetensors"))


def epoch_rows(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    rows = stack.http.get(f"/jobs/{job_id}/metrics").json()
    return [{k: r[k] for k in ("epoch", "train_loss", "val_loss", "val_accuracy")} for r in rows]


def local_files(root: Path) -> list[Path]:
    """Files a process left in its data dir that hold a job's artifacts (scratch included)."""
    return [p for p in root.rglob("*") if p.is_file() and "jobs" in p.relative_to(root).parts]


@pytest.mark.timeout(900)
def test_a_job_killed_on_one_worker_resumes_on_another_from_the_store(
    deployment: tuple[Deployment, ObjectStore],
) -> None:
    d, store = deployment
    st = d.stack
    ref = st.wait(st.submit(digits("reference", EPOCHS))["id"], timeout=300)
    assert ref["status"] == "succeeded", (ref, st.logs())

    job_id = st.submit(digits("moved", EPOCHS))["id"]
    running = st.wait(job_id, predicate=running_past(3), timeout=300)
    victim = d.running(running)
    os.killpg(victim.popen.pid, signal.SIGKILL)
    victim.popen.wait(30)
    survivor = next(w for w in d.workers if w is not victim)

    # The newest checkpoint loses its manifest, as a save killed between its objects and its
    # manifest leaves it: the resume must take the committed one before it.
    prefix = f"jobs/{job_id}/checkpoints"
    committed = list_bundles(store, prefix)  # newest first
    assert len(committed) >= 2, [b.name for b in committed]
    torn, previous = committed[0], committed[1]
    store.delete(f"{torn.prefix}/{MANIFEST}")
    assert store.list_objects(torn.prefix), "the torn checkpoint's objects stay in the bucket"

    done = st.wait(job_id, timeout=400)
    assert done["status"] == "succeeded", (done, st.logs())
    assert epoch_of(running) > 3
    assert f"claimed job {job_id}" in survivor.log.read_text(errors="replace")
    train = [s for s in done["stages"] if s["name"] == "train" and s["status"] == "succeeded"]
    resumed = train[-1]["outputs"]["resumed_from"]
    assert resumed["path"] == previous.prefix, (resumed, torn.name)  # a key, not the s3 URL
    assert f"ckpt-e{resumed['epoch']:06d}-s{resumed['step']:07d}" == previous.name

    reference = stored_weights(store, ref["id"])
    assert same_weights(reference, stored_weights(store, job_id))
    assert epoch_rows(st, ref["id"]) == epoch_rows(st, job_id)
    # Nothing of any job stays on a machine: the store holds it all.
    for name in ("api", "wa", "wb"):
        assert local_files(d.data_dir(name)) == [], name

    # The API has never had a file of this model: it serves and exports it from the store.
    model = done["result"]["model"]
    name, version = model["name"], model["version"]
    r = st.http.post("/predict", json={"model": f"{name}:{version}", "inputs": [[[0.5] * 8] * 8]})
    assert r.status_code == 200, r.text
    assert r.json()["model"]["version"] == version
    r = st.http.get(f"/models/{name}/versions/{version}/download", params={"format": "safetensors"})
    assert r.status_code == 200, r.text
    assert same_weights(reference, load(r.content))
    r = st.http.get(f"/models/{name}/versions/{version}/download", params={"format": "onnx"})
    assert r.status_code == 200, r.text
    import onnx

    onnx.checker.check_model(onnx.load_model(io.BytesIO(r.content)))

    # A job starting from that model's weights (init_from) reads them from the store too.
    tuned = digits("tuned", 1)
    tuned["model"]["init_from"] = f"{name}:{version}"
    tuned_job = st.wait(st.submit(tuned)["id"], timeout=300)
    assert tuned_job["status"] == "succeeded", (tuned_job, st.logs())
    assert tuned_job["result"]["init_from"]["job_id"] == job_id

    # Deleting the job deletes its prefix in the bucket (the version first: it is served).
    assert st.http.delete(f"/models/{name}/versions/{version}").status_code == 204
    assert st.http.delete(f"/jobs/{job_id}").status_code == 204
    assert store.list_objects(f"jobs/{job_id}") == []

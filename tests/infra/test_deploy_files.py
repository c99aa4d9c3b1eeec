"""The deployment files agree with each other and with the CLI. There is no Docker engine in CI, so
they are read, not run; the packaging check installs the project the way the image does."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


def load_compose(text: str | None = None) -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text() if text is None else text)
    assert isinstance(doc, dict)
    return doc


def command(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → volume name, for volumes in the short syntax (an anonymous volume, a
    bare container path, is private to its container: named "")."""
    out = {}
    for v in service.get("volumes", []):
        source, _, target = v.partition(":")
        if not target:
            source, target = "", source
        out[target.split(":")[0]] = source
    return out


def volume_for(service: dict[str, Any], path: str) -> str | None:
    """The named volume that holds ``path`` inside ``service`` (the deepest mount containing it)."""
    best = None
    for target, source in mounts(service).items():
        if (path == target or path.startswith(target.rstrip("/") + "/")) and (
            best is None or len(target) > len(best[0])
        ):
            best = (target, source)
    return best[1] if best else None


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def test_compose_services(services: dict[str, Any]) -> None:
    assert set(services) == {"api", "worker", "redis", "postgres", "minio", "minio-bucket"}
    assert services["redis"]["image"].split(":")[0] == "redis"
    assert services["redis"]["image"].endswith(":7")
    assert services["postgres"]["image"] == "postgres:16"
    # api and worker run the same image, built from this repo.
    assert services["api"]["image"] == services["worker"]["image"]
    assert services["api"]["build"] == services["worker"]["build"] == "."


def test_compose_commands_match_the_cli(services: dict[str, Any]) -> None:
    api = command(services["api"])
    assert api[:2] == ["tas", "serve"]
    assert "--no-worker" in api  # the workers are their own service
    assert api[api.index("--host") + 1] == "0.0.0.0"
    assert command(services["worker"])[:2] == ["tas", "worker"]
    assert "8000:8000" in services["api"]["ports"]


def default_of(value: str) -> str:
    """`${NAME:-default}` → default (what compose uses when NAME is not set)."""
    found = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return found.group(1) if found else value


def test_compose_api_and_workers_share_nothing_but_the_services(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    api, worker = services["api"], services["worker"]
    assert api["environment"] == worker["environment"]
    env = api["environment"]

    # Artifacts live in the bucket; no volume is shared by the api and a worker.
    store = urlsplit(env["TAS_ARTIFACT_URL"])
    assert (store.scheme, store.netloc) == ("s3", "tas")
    endpoint = urlsplit(env["AWS_ENDPOINT_URL"])
    assert (endpoint.hostname, endpoint.port) == ("minio", 9000)
    minio_env = services["minio"]["environment"]
    assert default_of(env["AWS_ACCESS_KEY_ID"]) == default_of(minio_env["MINIO_ROOT_USER"])
    assert default_of(env["AWS_SECRET_ACCESS_KEY"]) == default_of(minio_env["MINIO_ROOT_PASSWORD"])
    assert "local/tas" in " ".join(command(services["minio-bucket"]))  # the bucket is created
    assert "TAS_ARTIFACT_DIR" not in env
    shared = {v for v in mounts(api).values() if v} & {v for v in mounts(worker).values() if v}
    assert not shared, f"api and worker share {shared}"
    assert mounts(worker).get("/data") == ""  # scratch and cache: the container's own
    assert volume_for(api, env["TAS_CACHE_DIR"]) in compose["volumes"]

    db = urlsplit(env["TAS_DATABASE_URL"])
    pg_env = services["postgres"]["environment"]
    assert db.scheme == "postgresql+psycopg"
    assert db.hostname == "postgres"  # the service name
    assert db.port == 5432
    assert (db.username, db.password) == (pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"])
    assert db.path.lstrip("/") == pg_env["POSTGRES_DB"]

    broker = urlsplit(env["TAS_BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)
    assert "tas keys create" in COMPOSE.read_text()  # documented where a key is to be made


def test_compose_redis_never_evicts_and_persists(services: dict[str, Any]) -> None:
    cmd = command(services["redis"])
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert volume_for(services["redis"], "/data") is not None


def test_compose_healthchecks_and_startup_order(services: dict[str, Any]) -> None:
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "ping" in " ".join(services["redis"]["healthcheck"]["test"])
    assert {"postgres", "redis"} <= set(services["api"]["depends_on"])
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            if cond["condition"] == "service_completed_successfully":  # a one-shot set-up step
                assert "restart" not in services[dep], f"{dep} runs once"
                continue
            assert cond["condition"] == "service_healthy", f"{name} → {dep}"
            hc = services[dep].get("healthcheck")
            assert hc is not None, f"{name} waits for {dep} to be healthy, which has no healthcheck"
            if "test" not in hc:  # inherits the image's HEALTHCHECK
                assert services[dep].get("build") == ".", f"{dep} has no healthcheck test"
                assert "/healthz" in dockerfile_instructions()["HEALTHCHECK"][0]


def test_commented_gpu_worker_is_valid_once_uncommented() -> None:
    lines = COMPOSE.read_text().splitlines()
    start = lines.index("  # worker-gpu:")
    end = start
    while end < len(lines) and lines[end].startswith("  #"):
        end += 1
    block = [re.sub(r"^  # ?", "  ", line) for line in lines[start:end]]
    doc = load_compose("\n".join([*lines[:start], *block, *lines[end:]]))
    gpu = doc["services"]["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["capabilities"] == ["gpu"]
    cmd = command(gpu)
    assert cmd[:2] == ["tas", "worker"]
    assert cmd[cmd.index("--queues") + 1] == "gpu"
    assert gpu["environment"]["TAS_DEVICE"] == "cuda"
    api = doc["services"]["api"]
    for key, value in api["environment"].items():
        assert gpu["environment"][key] == value
    assert mounts(gpu).get("/data") == ""  # its own scratch, as every worker


def dockerfile_instructions() -> dict[str, list[str]]:
    """Instruction → its arguments, in order, with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        out.setdefault(instr.upper(), []).append(rest.strip())
    return out


def test_dockerfile_key_instructions() -> None:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    d = dockerfile_instructions()
    body = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert body[0].startswith("ARG BASE_IMAGE=python:3.11-slim")  # before FROM: usable in FROM
    assert d["FROM"] == ["${BASE_IMAGE}"]
    assert any(a.startswith("TORCH_INDEX=") for a in d["ARG"])
    assert any('--index-url "${TORCH_INDEX}"' in r and "torch" in r for r in d["RUN"])
    assert "nvidia/cuda:" in DOCKERFILE.read_text()  # the documented CUDA alternative
    assert any(re.search(r"pip install (\.|/src)( |$)", r) for r in d["RUN"])

    assert json.loads(d["CMD"][-1]) == ["tas", "serve", "--host", "0.0.0.0"]
    assert d["EXPOSE"] == ["8000"]
    assert "TAS_DATA_DIR=/data" in " ".join(d["ENV"])
    assert d["VOLUME"] == ["/data"]
    assert "/healthz" in d["HEALTHCHECK"][0]

    user = d["USER"][-1]
    assert user not in ("root", "0", "0:0")
    # The user is dropped after the last RUN, so the server never runs as root.
    last_user = max(i for i, ln in enumerate(body) if ln.startswith("USER "))
    last_run = max(i for i, ln in enumerate(body) if ln.startswith("RUN "))
    assert last_user > last_run
    assert re.search(rf"useradd .*\b{user}\b", " ".join(d["RUN"]))
    assert re.search(rf"chown {user}(:{user})? /data", " ".join(d["RUN"]))


def test_dockerignore_keeps_what_pip_install_needs() -> None:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    for p in (".venv", ".git", "var", ".env"):
        assert p in patterns

    def ignored(path: str) -> bool:
        return any(
            fnmatch.fnmatch(path, pat.lstrip("/").removeprefix("**/"))
            or fnmatch.fnmatch(path.split("/")[0], pat)
            for pat in patterns
        )

    needed = ["pyproject.toml", "README.md", "migrations/env.py"]
    needed += [f"{pkg}/__init__.py" for pkg in ("tas", "app", "worker", "core")]
    assert [p for p in needed if ignored(p)] == []
    assert ignored(".venv/bin/python") and ignored("tas/__pycache__/x.pyc")


#: The import packages a wheel may install at the top level: `tas` (the core, the store, the CLI and
#: the migrations) and the two deployables, the HTTP service and the worker.
TOP_LEVEL = {"tas", "app", "worker"}

TINY_JOB = {
    "name": "from-the-wheel",
    "dataset": {"name": "iris", "val_fraction": 0.2},
    "model": {"arch": "mlp", "hidden": [8]},
    "training": {"epochs": 2, "batch_size": 16, "optimizer": "adam", "lr": 0.01},
}


def _source_packages() -> set[str]:
    """Every import package of the checkout, named as the wheel installs it."""
    found = {"tas.migrations", "tas.migrations.versions"}
    for top in ("tas", "app", "worker"):
        for init in (ROOT / top).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(ROOT).parts))
    return found


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding only the built wheel (`pip install .` builds the same
    one for the image); the dependencies come from the test's own environment by a `.pth` line,
    so no editable-install hook and no source tree can stand in for what the wheel lacks."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheels, venv = tmp / "wheels", tmp / "venv"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        cwd=tmp,
        capture_output=True,
    )
    (wheel,) = wheels.glob("tas-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    Path(site, "_tas_test_deps.pth").write_text(deps + "\n")
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    return venv


@pytest.mark.slow
def test_wheel_installs_one_namespace(wheel_venv: Path) -> None:
    """No generic top-level name besides the two deployables (no `core`, no `migrations`), and
    every package of the checkout is in the wheel (pyproject lists them: one left out fails here)."""
    python = wheel_venv / "bin" / "python"
    script = (
        "import importlib.metadata as m, json; "
        "files = m.files('tas'); "
        "print(json.dumps(sorted({str(f).split('/')[0] for f in files if str(f).endswith('.py')})));"
        "print(json.dumps(sorted({'.'.join(f.parts[:-1]) for f in files if f.name == '__init__.py'})))"
    )
    out = subprocess.run(
        [str(python), "-c", script], check=True, capture_output=True, text=True, cwd=wheel_venv
    ).stdout.splitlines()
    top, packages = set(json.loads(out[0])), set(json.loads(out[1]))
    assert top == TOP_LEVEL
    missing = _source_packages() - packages - {"tas.migrations.versions"}  # no __init__: data
    assert missing == set(), f"packages missing from pyproject's list: {sorted(missing)}"


@pytest.mark.slow
def test_wheel_migrates_serves_and_trains(wheel_venv: Path, tmp_path: Path) -> None:
    """`tas migrate`, `tas serve --no-worker` and `tas worker` from the wheel's own console script,
    outside the source tree: a job submitted to that server is trained by that worker and predicts."""
    import httpx

    from tests.helpers.servers import free_port, http_process

    tas = str(wheel_venv / "bin" / "tas")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAS_")}
    env.update(
        TAS_DATA_DIR=str(tmp_path / "data"),
        TAS_ALLOW_DOWNLOAD="false",
        TAS_ACCESS_LOG="false",
        OMP_NUM_THREADS="1",
        PYTHONPATH="",
    )
    p = subprocess.run(
        [tas, "migrate"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, f"`tas migrate` from the wheel failed:\n{p.stderr[-3000:]}"
    with sqlite3.connect(tmp_path / "data" / "tas.db") as conn:
        (version,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert version

    port = free_port()
    worker_log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [tas, "worker", "--loglevel", "warning"],
        cwd=tmp_path,
        env=env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        serve = [tas, "serve", "--no-worker", "--port", str(port)]
        with http_process(serve, port, env=env, cwd=tmp_path) as base:
            job = httpx.post(f"{base}/jobs", json=TINY_JOB, timeout=30).json()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                job = httpx.get(f"{base}/jobs/{job['id']}", timeout=30).json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.5)
            log = (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
            assert job["status"] == "succeeded", f"{job}\n{log}"
            answer = httpx.post(
                f"{base}/predict",
                json={"model": job["id"], "inputs": [[5.1, 3.5, 1.4, 0.2]]},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["predictions"]) == 1
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        worker_log.close()

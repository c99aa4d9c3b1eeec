"""Keys, tenants and quotas in the real processes (`tas serve` with its embedded worker; `tas serve
--no-worker` + `tas worker` on Redis and PostgreSQL): keys made and revoked with the `tas keys`
CLI while the API runs, a job trained for one tenant and invisible to another, its rows and files
written under its tenant by the worker, and no key's secret in any process's output."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tas.settings import Settings
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.orm import Checkpoint, Dataset, Job, ModelAlias, ModelVersion, WeightsFile
from tests.helpers.servers import PostgresServer, RedisServer, free_port
from tests.helpers.specs import iris_spec
from tests.helpers.stack import Stack, distributed_stack, embedded_stack

ENV = {"TAS_AUTH_CACHE_S": "0", "TAS_MAX_ACTIVE_JOBS_PER_TENANT": "2"}


@pytest.fixture(scope="module", params=["embedded", "redis_pg"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp(f"tenants-{request.param}")
    if request.param == "embedded":
        with embedded_stack(tmp, **ENV) as s:
            yield s
    else:
        redis: RedisServer = request.getfixturevalue("redis_server")
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        with distributed_stack(
            tmp, database_url=pg.create_database(), broker_url=redis.url, **ENV
        ) as s:
            yield s


def tas(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tas", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def create_key(stack: Stack, tenant: str, scopes: str, secrets: list[str]) -> tuple[str, str]:
    out = tas(stack, "keys", "create", "--tenant", tenant, "--scopes", scopes, "--name", tenant)
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("tas_"), out.stdout
    key_id, secret = key.split("_", 2)[1:]
    secrets.append(secret)
    assert secret not in out.stderr
    return key_id, key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_only_the_tenants(stack: Stack, job_id: str, tenant: str) -> None:
    """What the job's run wrote carries `tenant` alone: the job and its model version in the
    database (the only rows with a tenant so far), and every file or directory named after the
    job under the data dir lies under the tenant's prefix."""
    settings = Settings(data_dir=stack.data_dir, database_url=stack.env.get("TAS_DATABASE_URL"))
    engine = make_engine(settings.resolved_database_url)
    try:
        with make_sessionmaker(engine)() as s:
            tenants = {
                table.__name__: set(s.scalars(select(table.tenant).distinct()))
                for table in (Job, ModelVersion, ModelAlias, Dataset, WeightsFile)
            }
            assert s.scalar(select(Job.tenant).where(Job.id == job_id)) == tenant
            versions = s.scalars(select(ModelVersion.tenant).where(ModelVersion.job_id == job_id))
            assert list(versions) == [tenant]
            assert s.scalar(select(func.count()).where(Checkpoint.job_id == job_id)), (
                "no checkpoint"
            )
    finally:
        engine.dispose()
    assert tenants["Job"] == tenants["ModelVersion"] == {tenant}, tenants
    assert not (tenants["ModelAlias"] | tenants["Dataset"] | tenants["WeightsFile"]) - {tenant}
    prefix = stack.data_dir / "artifacts" / "tenants" / tenant
    named = [p for p in stack.data_dir.rglob(f"*{job_id}*")]
    assert named, "the job left no file named after it"
    outside = [p for p in named if not p.is_relative_to(prefix)]
    assert outside == [], f"the job's files outside {prefix}"


def test_keys_tenants_and_quotas_hold_in_the_real_processes(stack: Stack) -> None:
    http, secrets = stack.http, []
    assert http.get("/jobs").status_code == 200, "with no key the loopback server is open"

    _, admin = create_key(stack, "ops", "admin", secrets)
    _, a = create_key(stack, "team-a", "jobs:read,jobs:write,models:read,predict", secrets)
    b_id, b = create_key(stack, "team-b", "jobs:read,jobs:write,models:read,predict", secrets)
    assert http.get("/jobs").status_code == 401
    assert http.get("/healthz").status_code == 200

    r = http.post("/jobs", json=iris_spec(name="a-iris", model_name="iris-mlp"), headers=bearer(a))
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    http.headers.update(bearer(a))
    job = stack.wait(job_id, timeout=180)
    assert job["status"] == "succeeded", job
    name = "iris-mlp"

    b_headers = bearer(b)
    assert http.get(f"/jobs/{job_id}", headers=b_headers).status_code == 404
    assert http.get(f"/jobs/{job_id}/metrics", headers=b_headers).status_code == 404
    assert job_id not in http.get("/jobs", headers=b_headers).text
    assert name not in http.get("/models", headers=b_headers).text
    x = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
    for ref in (job_id, name, f"{name}:1"):
        assert http.post("/predict", json={"model": ref, **x}, headers=b_headers).status_code == 404
        assert http.post("/predict", json={"model": ref, **x}).status_code == 200, ref
    # The worker wrote the tenant's rows: its metrics, its model version, under team-a.
    assert len(http.get(f"/jobs/{job_id}/metrics").json()) >= 1
    assert [m["name"] for m in http.get("/models").json()] == [name]
    # ... and its files under the tenant's prefix.
    assert list((stack.data_dir / "artifacts" / "tenants" / "team-a").rglob("*.safetensors"))
    # ... and nothing of the job's elsewhere: no row of another tenant, no file out of its prefix.
    assert_only_the_tenants(stack, job_id, "team-a")

    # A tenant's queued + running jobs are bounded (2 here): the third is a 429 with Retry-After.
    slow = iris_spec(name="slow", training={"epochs": 400})
    started = [http.post("/jobs", json=slow, headers=b_headers) for _ in range(2)]
    assert all(s.status_code == 201 for s in started), [s.text for s in started]
    third = http.post("/jobs", json=slow, headers=b_headers)
    assert third.status_code == 429 and "retry-after" in third.headers, third.text
    assert "TAS_MAX_ACTIVE_JOBS_PER_TENANT" in third.text
    assert http.post("/jobs", json=iris_spec(), headers=bearer(a)).status_code == 201, (
        "team-b's limit is its own"
    )
    for s in started:
        http.post(f"/jobs/{s.json()['id']}/cancel", headers=b_headers)

    # Revoked with the CLI while the API runs: refused at once (TAS_AUTH_CACHE_S=0 here).
    out = tas(stack, "keys", "revoke", b_id)
    assert out.returncode == 0, out.stderr
    r = http.get("/jobs", headers=b_headers)
    assert r.status_code == 401, r.text
    listed = tas(stack, "keys", "list")
    assert listed.returncode == 0 and b_id in listed.stdout and "revoked" in listed.stdout

    events = http.get("/audit", headers=bearer(admin)).json()["items"]
    assert {"POST /jobs", "POST /jobs/{job_id}/cancel", "cli keys revoke"} <= {
        e["action"] for e in events
    }

    time.sleep(0.5)
    output = "\n".join(p.log.read_text(errors="replace") for p in stack.procs)
    assert not [s for s in secrets if s in output], "a key's secret is in a server's output"


def test_serve_refuses_a_public_bind_with_no_key(tmp_path: Path) -> None:
    env = {
        "TAS_DATA_DIR": str(tmp_path / "var"),
        "PATH": "/usr/bin:/bin",
    }
    port = str(free_port())
    refused = subprocess.run(
        [sys.executable, "-m", "tas", "serve", "--host", "0.0.0.0", "--port", port, "--no-worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2, refused.stderr
    assert "--insecure" in refused.stderr and "tas keys create" in refused.stderr
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tas",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            port,
            "--no-worker",
            "--insecure",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        answered: Any = None
        while time.monotonic() < deadline and answered is None:
            try:
                answered = httpx.get(f"http://127.0.0.1:{port}/jobs", timeout=2).status_code
            except httpx.HTTPError:
                time.sleep(0.2)
        assert answered == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "--insecure" in err


def test_serve_speaks_tls_with_a_certificate(tmp_path: Path) -> None:
    """`tas serve --ssl-certfile --ssl-keyfile`: HTTPS from tas itself, no proxy needed."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    port = str(free_port())
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tas",
            "serve",
            "--port",
            port,
            "--no-worker",
            "--ssl-certfile",
            str(cert),
            "--ssl-keyfile",
            str(key),
        ],
        env={"TAS_DATA_DIR": str(tmp_path / "var"), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline, answered = time.monotonic() + 60, None
        while time.monotonic() < deadline and answered is None:
            try:
                answered = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=str(cert)).json()
            except httpx.HTTPError:
                time.sleep(0.2)
        assert answered == {"status": "ok"}
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert f"https://127.0.0.1:{port}" in err

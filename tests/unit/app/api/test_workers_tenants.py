"""GET /workers on a deployment that several tenants share: each sees whether a worker is live
and what it can run, and counts only its own jobs running there (filtered in SQL, so how busy a
worker is with another tenant's jobs never shows); the host name and pid are for `admin` keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tas.store import jobs as job_store
from tas.store import keys as key_store
from tas.store import leases as lease_store
from tas.store import workers
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.unit_of_work import unit_of_work
from tests.helpers.api import make_app, migrated_settings, running_client

SHARED = workers.WorkerInfo(
    "shared@gpu-host-7", "gpu-host-7", 4242, ["default", "cpu"], [{"id": "cpu"}], {"cpus": 8}, 4
)
OTHER = workers.WorkerInfo(
    "other@gpu-host-8", "gpu-host-8", 4343, ["cpu"], [{"id": "cpu"}], {"cpus": 8}, 4
)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, dict[str, str]]]]:
    """Two workers; on `shared`, team-a runs two jobs and team-b one (team-a also has one
    queued); on `other`, team-b runs one. Keys: each team's reader, and an operator's key with
    `admin` and `jobs:read` in team-ops, which runs nothing."""
    settings = migrated_settings(tmp_path)
    engine = make_engine(settings.resolved_database_url)
    sessions = make_sessionmaker(engine)
    headers: dict[str, dict[str, str]] = {}
    with unit_of_work(sessions) as s:
        for info in (SHARED, OTHER):
            workers.register(s, info)
        secret = key_store.server_secret(settings)
        for who, tenant, scopes in [
            ("a", "team-a", ["jobs:read"]),
            ("b", "team-b", ["jobs:read"]),
            ("ops", "team-ops", ["jobs:read", "admin"]),
        ]:
            _, token = key_store.create_key(s, secret, tenant=tenant, scopes=scopes)
            headers[who] = {"Authorization": f"Bearer {token}"}
    running = [
        ("team-a", "shared@gpu-host-7/4242/t1"),
        ("team-a", "shared@gpu-host-7/4242/t2"),
        ("team-b", "shared@gpu-host-7/4242/t3"),
        ("team-b", "other@gpu-host-8/4343/t4"),
    ]
    for i, (tenant, owner) in enumerate(running):
        with unit_of_work(sessions) as s:
            job_id = job_store.create_job(s, _spec(i), tenant=tenant, max_attempts=1).id
        with unit_of_work(sessions) as s:
            assert lease_store.claim(s, job_id, owner, 60) is not None
    with unit_of_work(sessions) as s:
        job_store.create_job(s, _spec(9), tenant="team-a", max_attempts=1)
    engine.dispose()
    with running_client(make_app(settings)) as client:
        yield client, headers


def _spec(i: int) -> dict[str, Any]:
    return {"name": f"job-{i}", "dataset": {"name": "iris"}}


def _listed(client: TestClient, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    r = client.get("/workers", headers=headers)
    assert r.status_code == 200, r.text
    return {w["id"]: w for w in r.json()}


def test_each_tenant_counts_only_its_own_running_jobs(
    fleet: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    client, headers = fleet
    a, b = _listed(client, headers["a"]), _listed(client, headers["b"])
    assert {w: v["running_jobs"] for w, v in a.items()} == {
        "shared@gpu-host-7": 2,
        "other@gpu-host-8": 0,
    }
    assert {w: v["running_jobs"] for w, v in b.items()} == {
        "shared@gpu-host-7": 1,
        "other@gpu-host-8": 1,
    }
    # Both still see the whole fleet: whether each worker is live and what it can run.
    for listed in (a, b):
        shared = listed["shared@gpu-host-7"]
        assert (shared["status"], shared["live"]) == ("online", True)
        assert shared["queues"] == ["default", "cpu"] and shared["concurrency"] == 4
        assert shared["capacity"]["cpus"] == 8 and shared["devices"][0]["id"] == "cpu"


def test_the_host_and_pid_are_shown_to_admin_keys_alone(
    fleet: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    client, headers = fleet
    for who in ("a", "b"):
        r = client.get("/workers", headers=headers[who])
        assert all(w["hostname"] is None and w["pid"] is None for w in r.json()), r.json()
        assert "gpu-host-8" not in r.text.replace("other@gpu-host-8", "")
        assert "4343" not in r.text
    ops = _listed(client, headers["ops"])
    assert (ops["shared@gpu-host-7"]["hostname"], ops["shared@gpu-host-7"]["pid"]) == (
        "gpu-host-7",
        4242,
    )
    # The operator's tenant runs nothing: its count is its own too; the fleet's total per
    # worker is /metrics' tas_worker_running_jobs.
    assert {w: v["running_jobs"] for w, v in ops.items()} == {
        "shared@gpu-host-7": 0,
        "other@gpu-host-8": 0,
    }
    m = client.get("/metrics", headers=headers["ops"])
    assert m.status_code == 200, m.text
    assert 'tas_worker_running_jobs{worker="shared@gpu-host-7"} 3.0' in m.text


def test_an_open_server_shows_everything_to_its_single_tenant(tmp_path: Path) -> None:
    """With no key (a laptop), the caller is the tenant `default` with every scope: the host and
    pid show, as the README's walk-through prints them."""
    settings = migrated_settings(tmp_path / "open")
    engine = make_engine(settings.resolved_database_url)
    with unit_of_work(make_sessionmaker(engine)) as s:
        workers.register(s, SHARED)
    engine.dispose()
    with running_client(make_app(settings)) as client:
        (w,) = client.get("/workers").json()
    assert (w["hostname"], w["pid"], w["running_jobs"]) == ("gpu-host-7", 4242, 0)

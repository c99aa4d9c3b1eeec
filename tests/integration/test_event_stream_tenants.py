"""The per-tenant bound on open event streams (TAS_MAX_EVENT_STREAMS_PER_TENANT) in a real `tas
serve --no-worker`, called over HTTP with two tenants' keys: one tenant at its bound is refused
with a 429 naming the setting while the other still opens streams, and a stream its client closes
gives the slot back. The count lives in the API process, whatever the database, so SQLite alone
(tests/integration/test_event_streams.py drives the process-wide bound on PostgreSQL too)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import httpx
import pytest

from tas.store import keys as key_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.unit_of_work import unit_of_work
from tests.helpers.api import migrated_settings
from tests.helpers.servers import free_port, http_process
from tests.helpers.stack import base_env
from tests.integration.test_event_streams import SPEC, Stream, open_stream

pytestmark = pytest.mark.integration

PER_TENANT = 3


def make_keys(tmp: Path) -> dict[str, str]:
    """A key per tenant (and one that reads /metrics), made in the database the server will use."""
    settings = migrated_settings(tmp)
    engine = make_engine(settings.resolved_database_url)
    wanted = {
        "team-a": ["jobs:read", "jobs:write"],
        "team-b": ["jobs:read", "jobs:write"],
        "ops": ["metrics:read"],
    }
    try:
        with unit_of_work(make_sessionmaker(engine)) as s:
            secret = key_store.server_secret(settings)
            return {
                tenant: key_store.create_key(s, secret, tenant=tenant, scopes=scopes)[1]
                for tenant, scopes in wanted.items()
            }
    finally:
        engine.dispose()


def client(base: str, key: str) -> httpx.AsyncClient:
    """A tenant's client, keeping no connection for reuse: a refused stream's connection, idle
    past the server's keep-alive timeout while the test waits, would be closed by the server just
    as the next request reuses it (see tests/integration/test_event_streams.py, `clients`)."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.AsyncClient(base_url=base, timeout=30, limits=limits, headers=headers)


async def open_streams(c: httpx.AsyncClient, job_id: str, n: int) -> list[Stream]:
    opened = await asyncio.gather(*(open_stream(c, job_id) for _ in range(n)))
    streams = [s for s in opened if isinstance(s, Stream)]
    assert len(streams) == n, [getattr(s, "text", "") for s in opened]
    for e in await asyncio.gather(*(s.next_event() for s in streams)):
        assert e is not None and e["event"] == "job", e
        assert e["data"]["id"] == job_id and e["data"]["status"] == "queued"
    return streams


async def open_streams_count(ops: httpx.AsyncClient) -> float:
    r = await ops.get("/metrics")
    assert r.status_code == 200, r.text
    for line in r.text.splitlines():
        if line.startswith("tas_event_streams "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no tas_event_streams in /metrics")


async def until_streams(ops: httpx.AsyncClient, n: int, wait_s: float = 15) -> None:
    deadline = time.monotonic() + wait_s
    while (count := await open_streams_count(ops)) != n:
        assert time.monotonic() < deadline, f"{count} streams open, expected {n}"
        await asyncio.sleep(0.05)


async def submit(c: httpx.AsyncClient, name: str) -> str:
    r = await c.post("/jobs", json={**SPEC, "name": name})
    assert r.status_code == 201, r.text
    job_id: str = r.json()["id"]
    return job_id


def test_one_tenant_at_its_stream_bound_leaves_the_other_its_own(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    port = free_port()
    env = base_env(
        tmp_path / "var",
        TAS_MAX_EVENT_STREAMS="50",
        TAS_MAX_EVENT_STREAMS_PER_TENANT=str(PER_TENANT),
        TAS_ACCESS_LOG="false",
    )
    cmd = [sys.executable, "-m", "tas", "serve", "--no-worker", "--port", str(port)]

    async def run(base: str) -> None:
        a, b, ops = (
            client(base, keys["team-a"]),
            client(base, keys["team-b"]),
            client(base, keys["ops"]),
        )
        async with a, b, ops:
            job_a = await submit(a, "a-watched")
            job_b = await submit(b, "b-watched")

            a_streams = await open_streams(a, job_a, PER_TENANT)
            refused = await open_stream(a, job_a)
            assert isinstance(refused, httpx.Response) and refused.status_code == 429, refused
            assert int(refused.headers["retry-after"]) > 0
            detail = refused.json()["detail"]
            assert f"TAS_MAX_EVENT_STREAMS_PER_TENANT={PER_TENANT}" in detail, detail
            # Nor on another of its jobs: the bound is the tenant's, not the job's.
            job_a2 = await submit(a, "a-other")
            other = await open_stream(a, job_a2)
            assert isinstance(other, httpx.Response) and other.status_code == 429

            # team-b, meanwhile: its own job streams; team-a's job is as unknown to it.
            foreign = await open_stream(b, job_a)
            assert isinstance(foreign, httpx.Response) and foreign.status_code == 404
            b_streams = await open_streams(b, job_b, 1)
            await until_streams(ops, PER_TENANT + 1)

            # team-a closes one stream: its slot comes back, and one more is refused again.
            await a_streams.pop().close()
            await until_streams(ops, PER_TENANT)
            a_streams += await open_streams(a, job_a2, 1)
            again = await open_stream(a, job_a)
            assert isinstance(again, httpx.Response) and again.status_code == 429

            for s in a_streams + b_streams:
                await s.close()
            await until_streams(ops, 0)

    with http_process(cmd, port, env=env) as base:
        asyncio.run(run(base))

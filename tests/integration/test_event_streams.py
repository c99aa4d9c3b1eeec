"""Many dashboards watching: open `GET /jobs/{id}/events` streams against a real `tas serve
--no-worker` process, on SQLite and on PostgreSQL (where the connection pool is the limit), while
plain requests keep answering at once; beyond TAS_MAX_EVENT_STREAMS a 429; and once the streams
close, nothing is left held: no pooled connection, no slot."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.servers import PostgresServer, free_port, http_process
from tests.helpers.stack import base_env

pytestmark = pytest.mark.integration

MAX_STREAMS = 50
#: The latency asked of plain requests while streams are open: the median of several sequential
#: requests, so one scheduling hiccup does not decide it. On a test machine so busy that the same
#: requests take over half of it with no stream open, the bound is twice that baseline instead;
#: either way streams that starve the pool or the threadpool (seconds, timeouts) fail it.
BOUND_S = 0.1

SPEC: dict[str, Any] = {
    "name": "watched",
    "dataset": {"name": "iris"},
    "model": {"arch": "mlp", "hidden": [8]},
    "training": {"epochs": 1, "batch_size": 16, "optimizer": "adam", "lr": 0.01},
}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`tas serve --no-worker` (no worker: a job stays queued, so its streams stay open) with the
    default pool (5 + 10 connections) and the stream bound at MAX_STREAMS."""
    tmp: Path = tmp_path_factory.mktemp(f"events-{request.param}")
    extra = {"TAS_MAX_EVENT_STREAMS": str(MAX_STREAMS), "TAS_ACCESS_LOG": "false"}
    if request.param == "postgres":
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        extra["TAS_DATABASE_URL"] = pg.create_database()
    port = free_port()
    cmd = [sys.executable, "-m", "tas", "serve", "--no-worker", "--port", str(port)]
    with http_process(cmd, port, env=base_env(tmp / "var", **extra)) as base:
        yield base


class Stream:
    """One open SSE response, read event by event."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()

    async def next_event(self, wait_s: float = 15) -> dict[str, Any] | None:
        """The next event's fields (`data` parsed), or None when the server ended the stream."""

        async def read() -> dict[str, Any] | None:
            fields: dict[str, Any] = {}
            async for line in self.lines:
                if not line:
                    if fields:
                        fields["data"] = json.loads(fields["data"])
                        return fields
                elif not line.startswith(":"):  # a ping is a comment
                    key, _, value = line.partition(":")
                    fields[key] = value.removeprefix(" ")
            return None

        return await asyncio.wait_for(read(), wait_s)

    async def close(self) -> None:
        await self.response.aclose()


async def open_stream(client: httpx.AsyncClient, job_id: str) -> Stream | httpx.Response:
    """A Stream, or the refusal (its body read) when the status is not 200."""
    response = await client.send(client.build_request("GET", f"/jobs/{job_id}/events"), stream=True)
    if response.status_code == 200:
        return Stream(response)
    await response.aread()
    await response.aclose()
    return response


async def metrics(client: httpx.AsyncClient) -> dict[str, float]:
    r = await client.get("/metrics")
    assert r.status_code == 200
    out = {}
    for line in r.text.splitlines():
        if line.startswith(("tas_event_stream", "tas_db_pool")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def wait_idle(client: httpx.AsyncClient, wait_s: float = 15) -> dict[str, float]:
    """Until no stream is counted and no pooled connection is checked out."""
    deadline = time.monotonic() + wait_s
    while True:
        m = await metrics(client)
        if m["tas_event_streams"] == 0 and m["tas_db_pool_checked_out"] == 0:
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"streams or connections still held after they closed: {m}")
        await asyncio.sleep(0.1)


async def latencies(client: httpx.AsyncClient, job_id: str, n: int = 15) -> dict[str, list[float]]:
    """GET /jobs/{id} and /healthz, n times each, one after the other (after one warm-up each)."""
    out: dict[str, list[float]] = {}
    for path in (f"/jobs/{job_id}", "/healthz"):
        assert (await client.get(path)).status_code == 200
        out[path] = []
        for _ in range(n):
            start = time.perf_counter()
            r = await client.get(path)
            out[path].append(time.perf_counter() - start)
            assert r.status_code == 200, r.text
    return out


def assert_fast(
    measured: dict[str, list[float]], baseline: dict[str, list[float]]
) -> dict[str, str]:
    """Each route's median under BOUND_S (or twice its no-stream median on a busy machine)."""
    report = {}
    for (path, seconds), base in zip(measured.items(), baseline.values(), strict=True):
        median, base_median = statistics.median(seconds), statistics.median(base)
        bound = max(BOUND_S, 2 * base_median)
        assert median < bound, (path, f"bound {bound:.3f} s", sorted(seconds))
        report[path] = f"median {median * 1000:.1f} ms (no stream: {base_median * 1000:.1f} ms)"
    return report


def clients(base: str) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
    """One client for the streams (a connection each, never kept for reuse: a refused stream's
    connection, idle past the server's keep-alive timeout while a test waits, would be closed by
    the server just as the next batch reuses it) and one for the plain requests."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    streams = httpx.AsyncClient(base_url=base, timeout=30, limits=limits)
    return streams, httpx.AsyncClient(base_url=base, timeout=30)


def test_twenty_streams_on_a_job_leave_plain_requests_fast(api: str) -> None:
    async def run() -> None:
        stream_client, probe = clients(api)
        async with stream_client, probe:
            job = (await probe.post("/jobs", json=SPEC)).json()
            baseline = await latencies(probe, job["id"])
            opened = await asyncio.gather(
                *(open_stream(stream_client, job["id"]) for _ in range(20))
            )
            streams = [s for s in opened if isinstance(s, Stream)]
            assert len(streams) == 20, [getattr(s, "text", "") for s in opened]
            firsts = await asyncio.gather(*(s.next_event() for s in streams))
            for e in firsts:
                assert e is not None and e["event"] == "job" and int(e["id"]) > 0
                assert e["data"]["id"] == job["id"] and e["data"]["status"] == "queued"

            m = await metrics(probe)
            assert m["tas_event_streams"] == 20 and m["tas_event_stream_jobs"] == 1
            # 20 streams, and at most the shared poller's one connection checked out
            assert m["tas_db_pool_checked_out"] <= 1, m
            print("20 streams:", assert_fast(await latencies(probe, job["id"]), baseline))

            # every stream gets the job's last state
            assert (await probe.post(f"/jobs/{job['id']}/cancel")).status_code == 200
            lasts = await asyncio.gather(*(s.next_event() for s in streams))
            for first, last in zip(firsts, lasts, strict=True):
                assert last is not None and last["data"]["status"] == "cancelled"
                assert first is not None and int(last["id"]) > int(first["id"])
            # then the named end (a finished job, not a dropped stream), then the server closes
            ends = await asyncio.gather(*(s.next_event() for s in streams))
            for end in ends:
                assert end is not None and end["event"] == "end", end
                assert end["data"]["status"] == "cancelled"
            assert await asyncio.gather(*(s.next_event() for s in streams)) == [None] * 20
            for s in streams:
                await s.close()
            await wait_idle(probe)

    asyncio.run(run())


def test_two_hundred_streams_over_a_bound_of_fifty(api: str) -> None:
    async def run() -> None:
        stream_client, probe = clients(api)
        async with stream_client, probe:
            job = (await probe.post("/jobs", json=SPEC)).json()
            baseline = await latencies(probe, job["id"])
            opened = await asyncio.gather(
                *(open_stream(stream_client, job["id"]) for _ in range(200))
            )
            streams = [s for s in opened if isinstance(s, Stream)]
            refused = [r for r in opened if isinstance(r, httpx.Response)]
            assert len(streams) == MAX_STREAMS
            assert len(refused) == 200 - MAX_STREAMS
            for r in refused:
                assert r.status_code == 429, r.text
                assert int(r.headers["retry-after"]) > 0
                assert f"TAS_MAX_EVENT_STREAMS={MAX_STREAMS}" in r.json()["detail"]
            for e in await asyncio.gather(*(s.next_event() for s in streams)):
                assert e is not None and e["event"] == "job" and e["data"]["status"] == "queued"

            m = await metrics(probe)
            assert m["tas_event_streams"] == MAX_STREAMS and m["tas_db_pool_checked_out"] <= 1, m
            measured = await latencies(probe, job["id"])
            print(f"{MAX_STREAMS} streams of 200 asked:", assert_fast(measured, baseline))

            # clients going away free their slots and hold nothing
            for s in streams:
                await s.close()
            await wait_idle(probe)

            # the counters are back to zero: a full set of streams is accepted again
            again = await asyncio.gather(
                *(open_stream(stream_client, job["id"]) for _ in range(MAX_STREAMS + 1))
            )
            statuses = sorted(200 if isinstance(s, Stream) else s.status_code for s in again)
            assert statuses == [200] * MAX_STREAMS + [429]
            for s in again:
                if isinstance(s, Stream):
                    await s.close()
            await wait_idle(probe)

    asyncio.run(run())


def test_a_stopping_server_ends_open_streams_cleanly(tmp_path: Path) -> None:
    """SIGTERM with streams open: each stream ends as a finished job's would (a complete
    response, not a cut connection or an error in the log), and the server exits promptly."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "tas", "serve", "--no-worker", "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            env=base_env(tmp_path / "var"),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"

    async def run() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + 90
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/healthz")).status_code == 200:
                        break
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                await asyncio.sleep(0.2)
            job = (await client.post("/jobs", json=SPEC)).json()
            opened = [await open_stream(client, job["id"]) for _ in range(5)]
            streams = [s for s in opened if isinstance(s, Stream)]
            assert len(streams) == 5
            for s in streams:
                assert await s.next_event() is not None
            stopped_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            # a clean end of each response (a cut one raises RemoteProtocolError here)
            assert await asyncio.gather(*(s.next_event() for s in streams)) == [None] * 5
            await asyncio.to_thread(proc.wait, 30)
            assert time.monotonic() - stopped_at < 10

    try:
        asyncio.run(run())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, log_path.read_text()
    assert "without completing response" not in log_path.read_text()

"""Plain requests while dashboards watch: open N `GET /jobs/{id}/events` streams on one job of a
real `tas serve --no-worker`, then time `GET /jobs/{id}` and `/healthz` (sequential requests on one
keep-alive connection) while they stay open.

    .venv/bin/python bench/event_streams.py [--streams 0,20,200,500] [--requests 20]
        [--postgres | --database-url postgresql+psycopg://...] [--max-streams 256]
        [--checkout PATH]

`--postgres` starts a throwaway PostgreSQL (tests/helpers/servers.py), a fresh database per row.

`--checkout` runs the server from another checkout of the repository (e.g. a `git worktree` of an
older commit) to compare before and after. A request that takes longer than `--timeout` counts as
a timeout; three of them end that row early."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.servers import free_port, http_process, start_postgres  # noqa: E402
from tests.helpers.stack import base_env  # noqa: E402

SPEC = {
    "name": "watched",
    "dataset": {"name": "iris"},
    "model": {"arch": "mlp", "hidden": [8]},
    "training": {"epochs": 1, "batch_size": 16, "optimizer": "adam", "lr": 0.01},
}


async def first_event(response: httpx.Response, wait_s: float) -> bool:
    async def read() -> bool:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                return True
        return False

    try:
        return await asyncio.wait_for(read(), wait_s)
    except TimeoutError:
        return False


async def timed(client: httpx.AsyncClient, path: str, n: int, wait_s: float) -> str:
    seconds: list[float] = []
    timeouts = 0
    for _ in range(n):
        start = time.perf_counter()
        try:
            r = await client.get(path, timeout=wait_s)
            r.raise_for_status()
            seconds.append(time.perf_counter() - start)
        except httpx.TimeoutException:
            timeouts += 1
            if timeouts == 3:
                break
    if not seconds:
        return f"all {timeouts} timed out (> {wait_s:g} s)"
    p50, worst = statistics.median(seconds) * 1000, max(seconds) * 1000
    extra = f", {timeouts} timed out" if timeouts else ""
    return f"p50 {p50:.1f} ms, max {worst:.1f} ms{extra}"


async def row(base: str, n: int, requests: int, wait_s: float) -> str:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with (
        httpx.AsyncClient(base_url=base, timeout=wait_s, limits=limits) as sc,
        httpx.AsyncClient(base_url=base, timeout=wait_s) as probe,
    ):
        job = (await probe.post("/jobs", json=SPEC)).json()
        url = f"/jobs/{job['id']}/events"

        async def open_one() -> httpx.Response | None:
            try:
                return await sc.send(sc.build_request("GET", url), stream=True)
            except httpx.HTTPError:
                return None

        responses = await asyncio.gather(*(open_one() for _ in range(n)))
        ok = [r for r in responses if r is not None and r.status_code == 200]
        refused = sum(1 for r in responses if r is not None and r.status_code == 429)
        failed = n - len(ok) - refused
        got = await asyncio.gather(*(first_event(r, wait_s) for r in ok))
        job_t = await timed(probe, f"/jobs/{job['id']}", requests, wait_s)
        health_t = await timed(probe, "/healthz", requests, wait_s)
        for r in responses:
            if r is not None:
                await r.aclose()
        return (
            f"| {n} | {len(ok)} ({sum(got)} got an event) | {refused} | {failed} | {job_t} | "
            f"{health_t} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--streams", default="0,20,200,500")
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--database-url", default=None)
    p.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL server")
    p.add_argument("--max-streams", type=int, default=None)
    p.add_argument("--checkout", type=Path, default=ROOT)
    args = p.parse_args()

    extra = {"TAS_ACCESS_LOG": "false"}
    if args.max_streams:
        extra["TAS_MAX_EVENT_STREAMS"] = str(args.max_streams)
    with contextlib.ExitStack() as stack:
        pg = None
        if args.postgres:
            pg = start_postgres(stack.enter_context(tempfile.TemporaryDirectory()))
            stack.callback(pg.stop)
        print("| streams asked | open | 429 | failed | GET /jobs/{id} | /healthz |")
        print("|---|---|---|---|---|---|")
        for n in (int(x) for x in args.streams.split(",")):
            # a fresh server per row: streams the previous row closed can't weigh on the next
            database_url = pg.create_database() if pg is not None else args.database_url
            if database_url:
                extra["TAS_DATABASE_URL"] = database_url
            with tempfile.TemporaryDirectory() as tmp:
                port = free_port()
                cmd = [sys.executable, "-m", "tas", "serve", "--no-worker", "--port", str(port)]
                env = base_env(Path(tmp) / "var", **extra)
                with http_process(cmd, port, env=env, cwd=args.checkout) as base:
                    print(asyncio.run(row(base, n, args.requests, args.timeout)), flush=True)


if __name__ == "__main__":
    main()

"""Read paths that the dashboard and clients poll: `GET /jobs/{id}`, a `GET /jobs` page and
`GET /jobs/{id}/metrics`, each against a bare FastAPI route returning the same JSON, same load,
one run.

The database holds 10,000 jobs of one tenant (each with its five stages; a few of the newest are
queued, so the list's "waiting for a worker" annotation runs) and one of them, the job read, has
a run of 100,000 step rows and 50 epoch rows. tas is `tas serve --no-worker` with
`TAS_ACCESS_LOG=false`, called with an API key (every scope), as the dashboard calls it. The
baseline is a plain FastAPI app under the same uvicorn settings (uvloop, httptools, no access
log) whose `async def` routes return, as a dict, the JSON tas answered for the same path. `wrk`
(Debian: `apt-get install -y wrk`) drives each over --connections connections; rounds alternate
between the servers (and which goes first), so drift and the other load on the machine hit
both alike; the figure is the median over rounds of tas / bare requests/s.

    .venv/bin/python bench/read_paths.py [--duration 8] [--rounds 3] [--connections 32] [--write]

`--write` replaces the `## Read paths` section of BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.predict_throughput import Load, _ms, machine, server  # noqa: E402
from bench.report import write_section  # noqa: E402
from tests.helpers.servers import free_port  # noqa: E402

SECTION = "## Read paths"
JOBS = 10_000
EPOCHS = 50
STEPS_PER_EPOCH = 2_000  # 100,000 step rows in all
STAGES = ("collect", "preprocess", "train", "evaluate", "register")

BARE_APP = '''
"""A bare FastAPI app: each route returns, as a dict, the JSON tas answered for the same path."""
import json, sys
import uvicorn
from fastapi import FastAPI

payloads = json.load(open(sys.argv[2]))
app = FastAPI()


def route(path, body):
    async def handler(job_id: str = ""):
        return body
    app.get(path)(handler)


for path, body in payloads.items():
    route(path, body)

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
'''


def seed(data_dir: Path) -> tuple[str, str]:
    """The jobs, stages and metric rows (see the module docstring); returns (job id, API key)."""
    from sqlalchemy import insert

    from tas.core.spec import JobSpec
    from tas.settings import Settings
    from tas.store import keys as key_store
    from tas.store import metric_rollup
    from tas.store.engine import make_engine, make_sessionmaker
    from tas.store.migrate import upgrade
    from tas.store.orm import Job, JobStage, MetricRow, new_id, utcnow

    settings = Settings(data_dir=data_dir)
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    spec = JobSpec.model_validate(
        {
            "name": "digits-mlp",
            "dataset": {"name": "digits", "val_fraction": 0.2},
            "model": {"arch": "mlp", "hidden": [256, 256], "dropout": 0.1},
            "training": {"epochs": EPOCHS, "batch_size": 16, "lr": 0.001, "scheduler": "cosine"},
        }
    ).model_dump(mode="json")
    t0 = utcnow() - timedelta(days=30)
    jobs, stages = [], []
    for i in range(JOBS):
        created = t0 + timedelta(minutes=4 * i)
        queued = i >= JOBS - 3
        started = created + timedelta(seconds=2)
        finished = started + timedelta(minutes=3)
        job_id = new_id()
        jobs.append(
            {
                "id": job_id,
                "tenant": "default",
                "name": f"digits-mlp-{i}",
                "spec": spec,
                "queue": "default",
                "status": "queued" if queued else "succeeded",
                "stage": None if queued else "register",
                "progress": None
                if queued
                else {
                    "epoch": EPOCHS,
                    "epochs": EPOCHS,
                    "step": STEPS_PER_EPOCH,
                    "steps_per_epoch": STEPS_PER_EPOCH,
                    "fraction": 1.0,
                    "samples_per_second": 5123.4,
                    "eta_seconds": 0.0,
                },
                "latest_metrics": None
                if queued
                else {"epoch": EPOCHS, "loss": 0.0412, "val_loss": 0.0838, "val_accuracy": 0.975},
                "best_metrics": None
                if queued
                else {"epoch": 41, "loss": 0.0455, "val_loss": 0.0791, "val_accuracy": 0.9806},
                "result": None
                if queued
                else {
                    "model": {"name": "digits-mlp", "version": i + 1},
                    "weights": {"epoch": 41, "metric": "val_accuracy", "value": 0.9806},
                    "test": {"accuracy": 0.9722, "loss": 0.0902},
                },
                "error": None,
                "attempts": 0 if queued else 1,
                "max_attempts": 3,
                "claims": 0 if queued else 1,
                "attempt_log": None
                if queued
                else [
                    {
                        "run": 1,
                        "owner": "worker-1",
                        "started_at": started.isoformat(),
                        "ended_at": finished.isoformat(),
                        "outcome": "succeeded",
                    }
                ],
                "tags": {"team": "vision", "sweep": str(i % 7)},
                "cancel_requested": False,
                "created_at": created,
                "queued_at": created,
                "started_at": None if queued else started,
                "finished_at": None if queued else finished,
                "updated_at": finished,
            }
        )
        if not queued:
            for n, name in enumerate(STAGES):
                stages.append(
                    {
                        "job_id": job_id,
                        "attempt": 1,
                        "name": name,
                        "status": "succeeded",
                        "started_at": started + timedelta(seconds=n),
                        "finished_at": started + timedelta(seconds=n + 1),
                        "outputs": {"rows": 1797} if name == "collect" else None,
                    }
                )
    target = str(jobs[JOBS - 10]["id"])  # a succeeded job on the first page
    rows = []
    for epoch in range(1, EPOCHS + 1):
        for step in range(STEPS_PER_EPOCH):
            rows.append(
                {
                    "job_id": target,
                    "epoch": epoch,
                    "step": (epoch - 1) * STEPS_PER_EPOCH + step,
                    "values": {"loss": 1.0 / (epoch + step / STEPS_PER_EPOCH), "lr": 0.001},
                }
            )
        rows.append(
            {
                "job_id": target,
                "epoch": epoch,
                "step": -1,
                "values": {"loss": 1.0 / epoch, "val_loss": 1.1 / epoch, "val_accuracy": 0.97},
            }
        )
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    with sessions() as s:
        s.execute(insert(Job), jobs)
        s.execute(insert(JobStage), stages)
        s.execute(insert(MetricRow), rows)
        metric_rollup.extend(s, target)  # the step rows' blocks, as the worker writes them
        _, key = key_store.create_key(
            s, key_store.server_secret(settings), tenant="default", scopes=key_store.ALL_SCOPES
        )
        s.commit()
    return target, key


def wrk_get(url: str, key: str, *, connections: int, duration: float) -> Load:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration:g}s",
            "--latency",
            "--timeout",
            "10s",
            "-H",
            f"Authorization: Bearer {key}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lat = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)\s*$", out, re.M))
    if "99" not in lat:
        raise RuntimeError(f"wrk gave no latency distribution for {url}:\n{out}")
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad = int(non2xx.group(1)) if non2xx else 0
    if errors:
        bad += sum(int(g) for g in errors.groups())
    return Load(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(lat["50"]),
        p99_ms=_ms(lat["99"]),
        requests=total,
        bad=bad,
    )


@dataclass
class Endpoint:
    label: str
    path: str  # as requested (query included)
    route: str  # the bare app's route template
    bytes: int = 0
    server_ms: float = 0.0  # median of sequential single requests, one connection


def single_requests(base: str, ep: Endpoint, key: str, n: int = 30) -> Any:
    """The answer, its size and the median time of `n` sequential requests over one connection:
    what one dashboard poll costs with nothing else in flight."""
    times = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as c:
        for _ in range(n):
            t = time.perf_counter()
            r = c.get(ep.path)
            times.append(time.perf_counter() - t)
            r.raise_for_status()
    ep.bytes = len(r.content)
    ep.server_ms = statistics.median(times) * 1e3
    return r.json()


def metrics_query(base: str, job_id: str, key: str) -> str:
    """The step-row query the job page makes: server-side downsampling when this server offers
    it (`max_points`), else a page of 1,000 rows."""
    doc = httpx.get(f"{base}/openapi.json", headers={"Authorization": f"Bearer {key}"}).json()
    params = doc["paths"]["/jobs/{job_id}/metrics"]["get"].get("parameters", [])
    if any(p["name"] == "max_points" for p in params):
        return f"/jobs/{job_id}/metrics?kind=step&max_points=1000"
    return f"/jobs/{job_id}/metrics?kind=step&limit=1000"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per server")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--only", action="append", default=[], help="endpoint labels to run")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    ap.add_argument(
        "--tas-env", action="append", default=[], help="KEY=VALUE for tas (tuning experiments)"
    )
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")

    tmp = Path(tempfile.mkdtemp(prefix="tas-read-bench-"))
    t = time.perf_counter()
    job_id, key = seed(tmp / "var")
    print(
        f"seeded {JOBS:,} jobs, {EPOCHS * STEPS_PER_EPOCH:,} step rows in {time.perf_counter() - t:.1f} s"
    )

    tas_port, bare_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAS_")}
    env["TAS_DATA_DIR"] = str(tmp / "var")
    tas_env = {**env, "TAS_ACCESS_LOG": "false", **dict(kv.split("=", 1) for kv in args.tas_env)}
    tas_cmd = [sys.executable, "-m", "tas", "serve", "--no-worker", "--port", str(tas_port)]
    tas_base = f"http://127.0.0.1:{tas_port}"
    bare_base = f"http://127.0.0.1:{bare_port}"
    endpoints: list[Endpoint] = []
    with server(tas_cmd, tas_env, f"{tas_base}/healthz", tmp / "tas.log"):
        endpoints = [
            Endpoint("GET /jobs/{id}", f"/jobs/{job_id}", "/jobs/{job_id}"),
            Endpoint("GET /jobs?limit=50", "/jobs?limit=50", "/jobs"),
            Endpoint(
                "GET /jobs/{id}/metrics (50 epoch rows)",
                f"/jobs/{job_id}/metrics",
                "/jobs/{job_id}/metrics",
            ),
            Endpoint(
                "GET /jobs/{id}/metrics?kind=step",
                metrics_query(tas_base, job_id, key),
                "/jobs/{job_id}/metrics/steps",
            ),
        ]
        if args.only:
            endpoints = [e for e in endpoints if any(o in e.label for o in args.only)]
        payloads = {e.route: single_requests(tas_base, e, key) for e in endpoints}
        (tmp / "payloads.json").write_text(json.dumps(payloads))
        (tmp / "bare_app.py").write_text(BARE_APP)
        bare_cmd = [
            sys.executable,
            str(tmp / "bare_app.py"),
            str(bare_port),
            str(tmp / "payloads.json"),
        ]
        ready = bare_base + endpoints[0].route.replace("{job_id}", job_id)
        with server(bare_cmd, env, ready, tmp / "bare.log"):
            results: dict[str, dict[str, list[Load]]] = {}
            for ep in endpoints:
                bare_path = ep.route.replace("{job_id}", job_id)
                urls = {"tas": tas_base + ep.path, "bare": bare_base + bare_path}
                for url in urls.values():  # warm-up
                    wrk_get(url, key, connections=args.connections, duration=2)
                loads: dict[str, list[Load]] = {"tas": [], "bare": []}
                for r in range(args.rounds):
                    order = ("tas", "bare") if r % 2 == 0 else ("bare", "tas")
                    for name in order:
                        load = wrk_get(
                            urls[name], key, connections=args.connections, duration=args.duration
                        )
                        loads[name].append(load)
                        print(f"{ep.label} round {r + 1} {name:4s} {load.row(name)}", flush=True)
                results[ep.label] = loads

    rows, verdicts = [], []
    for ep in endpoints:
        loads = results[ep.label]
        pairs = zip(loads["tas"], loads["bare"], strict=True)
        ratios = [t.rps / b.rps if b.rps else 0.0 for t, b in pairs]
        ratio = statistics.median(ratios)
        med = {n: statistics.median(x.rps for x in loads[n]) for n in loads}
        p99 = {n: statistics.median(x.p99_ms for x in loads[n]) for n in loads}
        bad = sum(x.bad for n in loads for x in loads[n])
        rows.append(
            f"| {ep.label} | {med['tas']:,.0f} | {med['bare']:,.0f} | **{ratio:.2f}**"
            f" ({', '.join(f'{x:.2f}' for x in ratios)}) | {p99['tas']:.1f} | {p99['bare']:.1f} |"
            f" {ep.bytes:,} | {ep.server_ms:.1f} | {bad} |"
        )
        verdicts.append(f"{ep.label}: {ratio:.2f}×")
    header = (
        "| path | tas req/s | bare req/s | tas / bare (per round) | tas p99 ms | bare p99 ms |"
        " bytes | one request ms | failed |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    cmd = "apt-get install -y wrk && .venv/bin/python bench/read_paths.py" + (
        f" --duration {args.duration:g} --rounds {args.rounds} --connections {args.connections}"
    )
    section = "\n".join(
        [
            SECTION,
            "",
            f"Machine: {machine()}. Command: `{cmd} --write`.",
            "",
            f"{JOBS:,} jobs of one tenant, the job read has {EPOCHS * STEPS_PER_EPOCH:,} step rows;"
            f" {args.connections} connections, `wrk -t1`, {args.duration:g} s per run,"
            f" {args.rounds} rounds alternating between tas (`tas serve --no-worker`,"
            " `TAS_ACCESS_LOG=false`, an API key) and a bare FastAPI app (an `async def` route"
            " returning the same JSON as a dict, same uvicorn settings), both on the same 2 cores"
            " as wrk. Requests/s and p99 are medians over the rounds; the ratio is the median of"
            " the rounds' ratios (target: GET /jobs/{id} ≥ 0.5). *one request*: the median of 30"
            " sequential requests on one connection, client-side.",
            "",
            header,
            *rows,
            "",
            "tas / bare requests/s: " + "; ".join(verdicts) + ".",
            "",
            "Where the time went, and what changed: GET /jobs/{id} measured 0.27× in this setup"
            " while it read through an ORM session (two thirds of its CPU time went to building"
            " ORM objects, checking a pooled connection out and back in, and the session around"
            " them, several times the two queries); it now reads plain rows on a read-only"
            " connection kept open between requests (`tas.store.engine.KeptReaders`), about half"
            " the CPU time per request. The ratio moves with the other load on the 2 cores: 0.66×,"
            " 0.50× and 0.49× in three runs within half an hour. On a quiet machine (load average"
            ' under 1, `--only "GET /jobs/{id}"`) the read handed to a worker thread reached'
            " 0.36× (355 vs 968 req/s); read on the event loop (SQLite: a reader in WAL mode does"
            " not wait for writers, and one that finds the file locked gives up after 50 ms and is"
            " retried on a thread) it reached 0.61× (699 vs 1,139 req/s, p99 145 vs 235 ms):"
            " under 32 connections the GIL passed between the loop and the thread on every"
            " request. The step series (1,000 points out of 100,000 rows) cost 0.3 s of CPU per"
            " request while every row was read (0 req/s here: 32 connections queued past wrk's"
            " timeout); it is now read from the rollup of blocks the worker writes with the rows"
            " (`tas.store.metric_rollup`), about 1,600 blocks and 80 rows, and serialised without"
            " a second validation: see *Dashboard pages* for its time per request beside a run of"
            " 100 rows.",
            "",
        ]
    )
    print(section)
    if args.write:
        write_section(SECTION, section.split("\n", 1)[1])
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

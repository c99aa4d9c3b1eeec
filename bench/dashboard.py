"""What the dashboard's two busiest pages cost the server: the jobs page over 10,000 jobs and the
page of a job with 100,000 step rows, beside the same page for a job with 100 (its curves should
cost about the same: the long series is read from its rollup). A page is its frame (the server-rendered HTML) plus the API
calls its module makes on load; each page is loaded `--rounds` times, request after request
over one keep-alive connection (as one browser tab, nothing else in flight), and the figures are
the server's time per page (the sum of its requests, timed at the client on loopback: median and
p95 over the rounds) and the bytes it sends (response bodies; tas sends them uncompressed).

The data: bench/read_paths.py's (10,000 jobs of one tenant, each with five stages; the job read
has 50 epoch rows and 100,000 step rows) plus, for that job, 500 log lines and 3 checkpoints.
tas is `tas serve --no-worker` with `TAS_ACCESS_LOG=false`; the client signs in with an API key
(every scope) through the sign-in form and sends the session cookie, as a browser does.

    .venv/bin/python bench/dashboard.py [--rounds 15] [--write]

`--write` replaces the `## Dashboard pages` section of BENCHMARKS.md."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.predict_throughput import machine, server  # noqa: E402
from bench.read_paths import EPOCHS, JOBS, STEPS_PER_EPOCH, seed  # noqa: E402
from bench.report import write_section  # noqa: E402
from tests.helpers.servers import free_port  # noqa: E402

SECTION = "## Dashboard pages"
LOG_LINES = 500
CHECKPOINTS = 3
#: The step rows of the short run the long one's job page is compared with.
SMALL_STEPS = 100
#: What the pages' modules (app/ui/static/js/pages) ask for on load: the jobs page a page of 25
#: in the order chosen (and, while any job is live, the live ones: three of these are queued),
#: the job page the job, its curves downsampled, its checkpoints and the head of its log.
JOBS_PAGE_SIZE = 25
MAX_POINTS = 1000
#: Files every page loads (the browser caches them after the first visit).
STATIC = (
    "/ui/static/css/tas.css",
    "/ui/static/js/api.js",
    "/ui/static/js/ui.js",
    "/ui/static/vendor/uplot/uPlot.esm.js",
    "/ui/static/vendor/uplot/uPlot.min.css",
)


@dataclass
class Page:
    label: str
    requests: list[str]
    #: per round: seconds per request, in `requests` order
    rounds: list[list[float]] = field(default_factory=list)
    bytes: dict[str, int] = field(default_factory=dict)


def pages(job_id: str, small_id: str) -> list[Page]:
    def jobs_page(query: str) -> list[str]:
        return [
            "/ui/jobs",
            "/session",
            f"/jobs?limit={JOBS_PAGE_SIZE}{query}",
            "/jobs?status=queued,running&limit=200",
        ]

    def job_page(job: str) -> list[str]:
        return [
            f"/ui/jobs/{job}",
            "/session",
            f"/jobs/{job}",
            f"/jobs/{job}/metrics?kind=all&max_points={MAX_POINTS}",
            f"/jobs/{job}/checkpoints",
            f"/jobs/{job}/logs?after=0",
        ]

    return [
        Page("jobs page (newest first)", jobs_page("")),
        Page("jobs page sorted by name", jobs_page("&sort=name")),
        Page("jobs page sorted by duration", jobs_page("&sort=-duration")),
        Page("jobs page filtered (status=failed)", jobs_page("&status=failed")),
        Page(f"job page ({EPOCHS * STEPS_PER_EPOCH:,} step rows)", job_page(job_id)),
        Page(f"job page ({SMALL_STEPS} step rows)", job_page(small_id)),
        Page("static files (first visit only)", list(STATIC)),
    ]


def add_logs_and_checkpoints(data_dir: Path, job_id: str) -> None:
    from sqlalchemy import insert

    from tas.settings import Settings
    from tas.store.engine import make_engine, make_sessionmaker
    from tas.store.orm import Checkpoint, JobLog, utcnow

    settings = Settings(data_dir=data_dir)
    t0 = utcnow() - timedelta(days=1)
    logs = [
        {
            "job_id": job_id,
            "created_at": t0 + timedelta(seconds=i),
            "attempt": 1,
            "worker": "worker-1",
            "level": "info",
            "source": "train",
            "message": f"epoch {1 + i // 10} step {i * 200}: loss {1.0 / (i + 1):.4f}",
        }
        for i in range(LOG_LINES)
    ]
    checkpoints = [
        {
            "job_id": job_id,
            "attempt": 1,
            "epoch": epoch,
            "step": epoch * STEPS_PER_EPOCH,
            "path": f"checkpoints/epoch-{epoch:04d}.pt",
            "metric_name": "val_accuracy",
            "metric_value": 0.95 + epoch / 10_000,
            "is_best": epoch == EPOCHS,
        }
        for epoch in range(EPOCHS - CHECKPOINTS + 1, EPOCHS + 1)
    ]
    engine = make_engine(settings.resolved_database_url)
    with make_sessionmaker(engine)() as s:
        s.execute(insert(JobLog), logs)
        s.execute(insert(Checkpoint), checkpoints)
        s.commit()
    engine.dispose()


def add_small_job(data_dir: Path) -> str:
    """A job like the big one with SMALL_STEPS step rows: what its curves cost is the baseline
    the big one's are held to (a chart of a long run should cost what a short run's does)."""
    from sqlalchemy import insert, select

    from tas.settings import Settings
    from tas.store import jobs as job_store
    from tas.store import metric_rollup
    from tas.store.engine import make_engine, make_sessionmaker
    from tas.store.orm import Job, MetricRow

    engine = make_engine(Settings(data_dir=data_dir).resolved_database_url)
    with make_sessionmaker(engine)() as s:
        spec = s.scalars(select(Job.spec).limit(1)).one()
        job = job_store.create_job(s, dict(spec), tenant="default", max_attempts=1)
        rows = [
            {"job_id": job.id, "epoch": 1 + i // 50, "step": i + 1, "values": {"loss": 1 / (i + 1)}}
            for i in range(SMALL_STEPS)
        ]
        rows += [
            {"job_id": job.id, "epoch": e, "step": -1, "values": {"loss": 1 / e, "val_loss": 1 / e}}
            for e in (1, 2)
        ]
        s.execute(insert(MetricRow), rows)
        metric_rollup.extend(s, job.id)
        s.commit()
        job_id = job.id
    engine.dispose()
    return job_id


def load(client: httpx.Client, page: Page) -> None:
    times = []
    for path in page.requests:
        start = time.perf_counter()
        r = client.get(path)
        times.append(time.perf_counter() - start)
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
        page.bytes[path] = len(r.content)
    page.rounds.append(times)


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="loads of each page")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tas-dashboard-bench-"))
    t = time.perf_counter()
    job_id, key = seed(tmp / "var")
    add_logs_and_checkpoints(tmp / "var", job_id)
    small_id = add_small_job(tmp / "var")
    print(
        f"seeded {JOBS:,} jobs and {EPOCHS * STEPS_PER_EPOCH:,} step rows in"
        f" {time.perf_counter() - t:.1f} s"
    )

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAS_")}
    env.update({"TAS_DATA_DIR": str(tmp / "var"), "TAS_ACCESS_LOG": "false"})
    cmd = [sys.executable, "-m", "tas", "serve", "--no-worker", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    todo = pages(job_id, small_id)
    load_avg = os.getloadavg()
    with (
        server(cmd, env, f"{base}/healthz", tmp / "tas.log"),
        httpx.Client(base_url=base, timeout=60) as client,
    ):
        # Signed in as a browser is: the session cookie, not the key, rides on every request.
        signin = client.post("/ui/signin", data={"api_key": key}, follow_redirects=False)
        if signin.status_code != 303 or "tas_session" not in client.cookies:
            raise RuntimeError(f"sign-in failed: {signin.status_code} {signin.text[:300]}")
        for page in todo:  # warm-up: the first load of each (imports, caches, SQLite's pages)
            load(client, page)
            page.rounds.clear()
        for _ in range(args.rounds):
            for page in todo:  # interleaved, so drift hits every page alike
                load(client, page)
    load_avg = tuple(max(a, b) for a, b in zip(load_avg, os.getloadavg(), strict=True))

    rows, detail = [], []
    for page in todo:
        totals = [sum(r) * 1e3 for r in page.rounds]
        rows.append(
            f"| {page.label} | {len(page.requests)} | {statistics.median(totals):.0f} |"
            f" {p95(totals):.0f} | {sum(page.bytes.values()):,} |"
        )
        for i, path in enumerate(page.requests):
            each = [r[i] * 1e3 for r in page.rounds]
            detail.append(
                f"| {page.label} | `{path.replace(job_id, '{id}').replace(small_id, '{id}')}` |"
                f" {statistics.median(each):.1f} | {p95(each):.1f} | {page.bytes[path]:,} |"
            )
    cmd_line = f".venv/bin/python bench/dashboard.py --rounds {args.rounds}"
    section = "\n".join(
        [
            SECTION,
            "",
            f"Machine: {machine()}; load average up to"
            f" {', '.join(f'{x:.1f}' for x in load_avg)} (1, 5, 15 min) while it ran: the cores"
            f" were shared with other work, so read the figures as upper bounds. Command:"
            f" `{cmd_line} --write`.",
            "",
            f"{JOBS:,} jobs of one tenant; the job shown has {EPOCHS} epoch rows,"
            f" {EPOCHS * STEPS_PER_EPOCH:,} step rows, {LOG_LINES} log lines and {CHECKPOINTS}"
            f" checkpoints; the short run beside it has {SMALL_STEPS} step rows, 2 epoch rows, no log"
            " and no checkpoints. A page = its frame + the API calls its module makes on load, one after"
            f" another on one keep-alive connection with the session cookie of a sign-in; {args.rounds} loads of each"
            " page (after one warm-up), interleaved. *Server time*: the sum of the page's requests,"
            " timed at the client on loopback; *bytes*: response bodies (uncompressed). The job"
            f" page's curves are `?kind=all&max_points={MAX_POINTS}`: the epoch and the step"
            f" series downsampled on the server to at most {MAX_POINTS:,} points each. The live"
            " event stream the job page then opens is not counted.",
            "",
            "| page | requests | server ms (median) | server ms (p95) | bytes |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            "The long run's curves request took 769 ms (p95 844) while every step row was read"
            " and decoded on each request; it is now read from the rollup the worker writes with"
            " the rows (blocks of 2**L rows, none longer than a bucket) and serialised without a"
            " second validation. What remains follows the points sent (1,050 points against the"
            " short run's 102), not the rows stored.",
            "",
            "Per request:",
            "",
            "| page | request | ms (median) | ms (p95) | bytes |",
            "| --- | --- | --- | --- | --- |",
            *detail,
            "",
        ]
    )
    print(section)
    if args.write:
        write_section(SECTION, section.split("\n", 1)[1])
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""`GET /jobs/{id}/predictions` on a large split: a JSON page from its end and the whole split as
a CSV stream, from a real `tas serve --no-worker`, with the API process's memory; beside them,
what answering the split whole as one JSON body (as the route did before it paged) costs.

A succeeded job's val split of --rows classification samples is written as the evaluate stage
writes it (`tas.core.predictions.write_all`). The server's memory is read from /proc while each
request runs (sampled every 10 ms): its anonymous memory (what the answer allocates) apart from
the file pages it maps (the split's own file, page cache the kernel can take back). The whole-
body figure is measured in a fresh process at --whole-rows (default: --rows), reading the split
and encoding every row as the route used to: a lower bound of what the route cost, which also
validated every row against its response model before encoding.

    .venv/bin/python bench/predictions_pages.py [--rows 10000000] [--whole-rows N] [--write]

`--write` replaces the `## Predictions pages` section of BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.predict_throughput import machine, server  # noqa: E402
from bench.report import code_rev, write_section  # noqa: E402
from tests.helpers.servers import free_port  # noqa: E402

SECTION = "## Predictions pages"
PAGE = 10_000


def split_arrays(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "index": rng.permutation(n).astype(np.int64),
        "label": rng.integers(0, 10, n).astype(np.int64),
        "predicted": rng.integers(0, 10, n).astype(np.int64),
        "probability": rng.random(n, dtype=np.float32),
        "class_names": np.asarray([f"class-{i}" for i in range(10)]),
    }


def seed(data_dir: Path, n: int) -> str:
    """A succeeded job whose val split holds `n` predictions; its id."""
    from tas.core import predictions
    from tas.settings import Settings
    from tas.store import jobs as job_store
    from tas.store.engine import make_engine, make_sessionmaker
    from tas.store.migrate import upgrade
    from tas.store.orm import Job, JobStatus

    settings = Settings(data_dir=data_dir)
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    with make_sessionmaker(engine)() as s:
        job = Job(
            name="big",
            spec={"name": "big"},
            status=JobStatus.succeeded.value,
            result={"evaluation": {"split": "val"}},
        )
        s.add(job)
        s.commit()
        job_id, tenant = job.id, job.tenant
    engine.dispose()
    root = job_store.job_dir(settings.resolved_artifact_dir, job_id, tenant=tenant)
    predictions.write_all(root, {"val": split_arrays(n)})
    return job_id


def _status(pid: int) -> dict[str, int]:
    """kB figures of /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0])
    return out


class Peak:
    """The largest RssAnon and RssFile of a process while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.anon = self.file = 0
        start = _status(pid)
        self.base_anon, self.base_file = start["RssAnon"], start["RssFile"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            st = _status(self.pid)
            self.anon = max(self.anon, st["RssAnon"])
            self.file = max(self.file, st["RssFile"])
            time.sleep(0.01)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def grew_mb(self) -> float:
        return (self.anon - self.base_anon) / 1024

    def file_grew_mb(self) -> float:
        return (self.file - self.base_file) / 1024


def _serving_pid(port: int) -> int:
    """The process listening on `port` (the API: `tas serve` may run it in a child)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[1].endswith(f":{port:04X}") and parts[3] == "0A":
            inode = parts[9]
    assert inode is not None, f"nothing listens on {port}"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            for fd in fds:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return int(pid)
        except OSError:
            continue
    raise RuntimeError(f"no process holds the socket on {port}")


def whole_body(data_dir: str, job_id: str) -> None:
    """(In a fresh process.) What the route did before it paged: the split read whole, every row
    built and encoded as one JSON body. Prints seconds and peak RSS growth."""
    from pydantic_core import to_json

    from tas.core import predictions
    from tas.settings import Settings
    from tas.store import jobs as job_store

    settings = Settings(data_dir=Path(data_dir))
    path = predictions.path_for(
        job_store.job_dir(settings.resolved_artifact_dir, job_id, tenant="default"), "val"
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    arrays = predictions.read(path)
    rows = predictions.rows(arrays)
    body = to_json({"count": len(rows), "predictions": rows})
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"s": seconds, "mb": (peak - before) / 1024, "bytes": len(body)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--whole-rows", type=int, default=None)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--whole-body", nargs=2, metavar=("DATA_DIR", "JOB_ID"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.whole_rows = args.whole_rows or args.rows
    if args.whole_body:
        whole_body(*args.whole_body)
        return

    with tempfile.TemporaryDirectory(prefix="tas-bench-") as tmp_name:
        tmp = Path(tmp_name)
        t = time.perf_counter()
        job_id = seed(tmp / "var", args.rows)
        small_id = seed(tmp / "small", args.whole_rows)
        print(f"seeded {args.rows:,} + {args.whole_rows:,} rows in {time.perf_counter() - t:.1f} s")
        out = subprocess.run(
            [sys.executable, __file__, "--whole-body", str(tmp / "small"), small_id],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        whole = json.loads(out.strip().splitlines()[-1])
        print("whole body", whole)

        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAS_")}
        env |= {"TAS_DATA_DIR": str(tmp / "var"), "TAS_ACCESS_LOG": "false"}
        cmd = [sys.executable, "-m", "tas", "serve", "--no-worker", "--port", str(port)]
        base = f"http://127.0.0.1:{port}"
        results: dict[str, Any] = {}
        with server(cmd, env, f"{base}/healthz", tmp / "tas.log"):
            pid = _serving_pid(port)
            url = f"{base}/jobs/{job_id}/predictions"
            with httpx.Client(timeout=600) as http:
                http.get(url, params={"limit": 1})  # warm: imports, the first read
                with Peak(pid) as peak:
                    t = time.perf_counter()
                    r = http.get(url, params={"limit": PAGE, "offset": args.rows - PAGE})
                    page_s = time.perf_counter() - t
                r.raise_for_status()
                assert len(r.json()["predictions"]) == PAGE and "link" not in r.headers
                results["page"] = (page_s, peak.grew_mb(), len(r.content), peak.file_grew_mb())
                with Peak(pid) as peak:
                    t = time.perf_counter()
                    size = lines = 0
                    with http.stream("GET", url, params={"format": "csv"}) as r:
                        r.raise_for_status()
                        for chunk in r.iter_bytes():
                            size += len(chunk)
                            lines += chunk.count(b"\n")
                    csv_s = time.perf_counter() - t
                assert lines == args.rows + 1, lines
                results["csv"] = (csv_s, peak.grew_mb(), size, peak.file_grew_mb())
        print(results)

    page_s, page_mb, page_bytes, page_file = results["page"]
    csv_s, csv_mb, csv_bytes, csv_file = results["csv"]
    body = f"""Machine: {machine()}. Code: {code_rev()}. Command: `.venv/bin/python bench/predictions_pages.py --rows {args.rows} --whole-rows {args.whole_rows} --write`.

A succeeded job's val split of {args.rows:,} classification rows (10 named classes), written as the evaluate stage writes it; a real `tas serve --no-worker` (SQLite, no key). *API anon MB*: the growth of the API process's anonymous memory (RssAnon, sampled every 10 ms) during the request; *file MB*: the growth of its file-backed RSS, the pages of the split's memory-mapped file it touched (page cache, which the kernel takes back under pressure).

| request | time | body | API anon MB | file MB |
| --- | --- | --- | --- | --- |
| JSON page of {PAGE:,} rows at offset {args.rows - PAGE:,} | {page_s * 1e3:.0f} ms | {page_bytes / 1e6:.1f} MB | {page_mb:.0f} | {page_file:.0f} |
| CSV, the whole split, streamed | {csv_s:.1f} s ({args.rows / csv_s / 1e6:.2f} M rows/s) | {csv_bytes / 1e6:.0f} MB | {csv_mb:.0f} | {csv_file:.0f} |
| before paging: the whole split as one JSON body, {args.whole_rows:,} rows (in a fresh process: read, build every row, encode; a lower bound) | {whole["s"]:.1f} s | {whole["bytes"] / 1e6:.0f} MB | {whole["mb"]:.0f} (peak RSS growth) | |

A page reads only its rows' slices of the mapped arrays (`tas.core.predictions.open_split`), so its time does not grow with the split; the CSV is built {10_000:,} rows at a time, so the API's memory stays flat however long the split, while the whole-body answer grew about {whole["mb"] / (args.whole_rows / 1e6):,.0f} MB per million rows."""
    print(body)
    if args.write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()

"""A dataset larger than memory through the service: 1,000,000 CIFAR-shaped images (3×32×32 uint8,
10 classes: 3 GB as bytes, 12 GB as float32) written as an NPZ without ever holding it, uploaded to a
real `tas serve` (API + its embedded worker, SQLite, a data dir of its own), and a CNN trained on it
through POST /jobs, while every process of the server is sampled from /proc: the API's peak resident
set while it takes the upload, the worker's (the prefork child that trains) while it decodes,
preprocesses and trains, with the resident set split into anonymous memory (RssAnon: the process's
own allocations) and mapped file pages (RssFile: the memory-mapped scratch and cache files, which the
kernel can drop and read again at will).

The images are learnable: each class has its own colour and stripe pattern, under uniform noise.

    .venv/bin/python bench/large_dataset.py [--samples 1000000] [--train-seconds 300] [--no-write]

Everything is created under one temp dir (`--dir`'s parent, default the system's), removed at the
end; it needs about 4× the dataset's bytes of free disk at the peak (the NPZ, the stored upload,
the worker's decoded scratch and split, the preprocessing cache).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.servers import free_port, http_server  # noqa: E402

SECTION = "## A dataset larger than memory (1,000,000 CIFAR-shaped images)"
SHAPE = (3, 32, 32)
CLASSES = 10
CHUNK = 8192  # images generated and written at a time (24 MiB)
BOUNDARY = "tas-large-dataset-boundary"


def templates() -> np.ndarray:
    """One 3×32×32 picture per class (values 0..191): a colour and stripes whose direction and
    period depend on the class."""
    rng = np.random.default_rng(1234)
    colours = rng.integers(0, 128, (CLASSES, 3))
    out = np.empty((CLASSES, *SHAPE), np.int16)
    grid = np.arange(32)
    for c in range(CLASSES):
        period = 2 + c % 5
        stripes = ((grid // period) % 2 == 0).astype(np.int16) * 64
        pattern = stripes[:, None] if c < 5 else stripes[None, :]
        out[c] = colours[c][:, None, None] + np.broadcast_to(pattern, (32, 32))[None]
    return out


def write_npz(path: Path, samples: int, seed: int = 0) -> float:
    """X (N×3×32×32 uint8) and y (N int64) streamed into an uncompressed NPZ a chunk at a time:
    the .npy header by hand, then the rows, straight into the zip entry (ZIP_STORED, zip64). Returns
    the seconds it took."""
    began = time.perf_counter()
    rng = np.random.default_rng(seed)
    pictures = templates()
    y = rng.integers(0, CLASSES, samples).astype(np.int64)
    header = {"descr": "|u1", "fortran_order": False, "shape": (samples, *SHAPE)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("X.npy", "w", force_zip64=True) as fp:
            np.lib.format.write_array_header_1_0(fp, header)
            for start in range(0, samples, CHUNK):
                labels = y[start : start + CHUNK]
                noise = rng.integers(0, 64, (len(labels), *SHAPE), dtype=np.uint8)
                fp.write((pictures[labels] + noise).astype(np.uint8).tobytes())
        with zf.open("y.npy", "w", force_zip64=True) as fp:
            np.lib.format.write_array(fp, y)
    return time.perf_counter() - began


# --- /proc sampling ------------------------------------------------------------------------------


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0])  # KiB
    return out


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    return "?"


@dataclass
class Peak:
    role: str
    cmd: str
    #: phase → the largest value seen of each field (KiB); VmHWM is the kernel's own high-water mark.
    phases: dict[str, dict[str, int]] = field(default_factory=dict)


class Sampler(threading.Thread):
    """Every `every` seconds: each process under the server (the API, the worker, its pool child),
    its resident set by kind, kept as a maximum per phase (`phase` is set by the main thread)."""

    def __init__(self, root: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root, self.every = root, every
        self.phase = "start"
        self.peaks: dict[int, Peak] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            level, depth = [self.root], 0
            while level:
                nxt: list[int] = []
                for pid in level:
                    values = _status(pid)
                    if values:
                        role = ["api (tas serve)", "worker (main)", f"worker (pool child {pid})"][
                            min(depth, 2)
                        ]
                        peak = self.peaks.setdefault(pid, Peak(role, _cmdline(pid)))
                        seen = peak.phases.setdefault(self.phase, {})
                        for k, v in values.items():
                            seen[k] = max(seen.get(k, 0), v)
                    nxt += _children(pid)
                level, depth = nxt, depth + 1
            time.sleep(self.every)


# --- the server and the client -------------------------------------------------------------------


@contextlib.contextmanager
def server(data_dir: Path, **env: str) -> Iterator[tuple[str, int]]:
    """`tas serve` (API + embedded worker, one job at a time) on a free port: (URL, pid)."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("TAS_")}
    full.update(TAS_DATA_DIR=str(data_dir), TAS_ALLOW_DOWNLOAD="false", **env)
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "tas", "serve", "--port", str(port), "--concurrency", "1"]
    with http_server(cmd, port, env=full, timeout=180, grace=60) as (url, proc):
        yield url, proc.pid


def multipart(path: Path) -> tuple[Iterator[bytes], int]:
    """The file as a multipart body read from disk 4 MiB at a time, and the body's length."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        with path.open("rb") as f:
            while chunk := f.read(4 << 20):
                yield chunk
        yield tail

    return body(), len(head) + path.stat().st_size + len(tail)


@dataclass
class Run:
    samples: int
    npz_bytes: int
    write_s: float = 0.0
    upload_s: float = 0.0
    upload_status: int = 0
    stages: dict[str, float] = field(default_factory=dict)  # stage → seconds
    job: dict[str, object] = field(default_factory=dict)
    best_rate: float = 0.0
    rates: list[float] = field(default_factory=list)
    peaks: dict[int, Peak] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def run(tmp: Path, samples: int, train_seconds: float, max_minutes: float) -> Run:
    npz = tmp / "cifar-shaped-1m.npz"
    print(f"writing {samples:,} images to {npz} ...", flush=True)
    write_s = write_npz(npz, samples)
    result = Run(samples=samples, npz_bytes=npz.stat().st_size, write_s=write_s)
    print(f"  {result.npz_bytes / 2**30:.2f} GiB in {write_s:.0f} s", flush=True)
    limit_mb = str(result.npz_bytes // 2**20 + 64)
    env = {
        "TAS_MAX_UPLOAD_MB": limit_mb,
        "TAS_UPLOAD_MAX_UNCOMPRESSED_MB": limit_mb,
        "TAS_UPLOAD_MAX_SAMPLES": str(samples + 1),
        "TAS_MAX_JOB_MINUTES": str(max(60.0, max_minutes)),
    }
    with server(tmp / "var", **env) as (url, pid), httpx.Client(timeout=3600) as http:
        sampler = Sampler(pid)
        sampler.start()
        try:
            sampler.phase = "upload"
            body, length = multipart(npz)
            began = time.perf_counter()
            r = http.post(
                url + "/datasets",
                content=body,
                headers={
                    "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                    "Content-Length": str(length),
                },
            )
            result.upload_s = time.perf_counter() - began
            result.upload_status = r.status_code
            print(f"  upload: {r.status_code} in {result.upload_s:.0f} s", flush=True)
            if r.status_code != 201:
                result.notes.append(f"upload refused: {r.text[:400]}")
                return result
            dataset = r.json()["id"]
            npz.unlink()  # the server keeps its own copy; free the disk
            sampler.phase = "idle"
            spec = {
                "name": "cifar-shaped-1m",
                "dataset": {"id": dataset, "val_fraction": 0.01, "augment": {"crop_padding": 4}},
                "model": {"arch": "cnn", "channels": [16, 32]},
                "training": {
                    "epochs": 1,
                    "batch_size": 256,
                    "optimizer": "adam",
                    "lr": 0.002,
                    "max_minutes": max_minutes,
                    "log_every_steps": 20,
                },
            }
            r = http.post(url + "/jobs", json=spec)
            if r.status_code not in (200, 201, 202):
                result.notes.append(f"job refused: {r.status_code} {r.text[:400]}")
                return result
            job_id = r.json()["id"]
            stage_began: dict[str, float] = {}
            train_began: float | None = None
            cancelled = False
            while True:
                job = http.get(url + f"/jobs/{job_id}").json()
                stage = job.get("stage") or job["status"]
                if job["status"] == "running" and stage not in stage_began:
                    stage_began[stage] = time.monotonic()
                    print(f"  stage {stage}", flush=True)
                sampler.phase = {"collect": "preprocess"}.get(stage, stage)
                progress = job.get("progress") or {}
                rate = progress.get("samples_per_second")
                if stage == "train" and rate:
                    result.rates.append(float(rate))
                if stage == "train" and train_began is None:
                    train_began = time.monotonic()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    result.job = job
                    break
                if (
                    train_began is not None
                    and not cancelled
                    and time.monotonic() - train_began > train_seconds
                ):
                    result.job = job  # where it got to before the cancel
                    http.post(url + f"/jobs/{job_id}/cancel")
                    cancelled = True
                    print(f"  cancelled after {train_seconds:.0f} s of training", flush=True)
                time.sleep(1)
            ends = [*sorted(stage_began.items(), key=lambda kv: kv[1]), ("end", time.monotonic())]
            for (name, t0), (_, t1) in itertools.pairwise(ends):
                result.stages[name] = t1 - t0
            if not cancelled:
                result.job = job
            result.job["final_status"] = job["status"]
            result.job["final_error"] = job.get("error")
        finally:
            sampler.stopped.set()
            sampler.join()
            result.peaks = sampler.peaks
    return result


def mib(kib: int) -> str:
    return f"{kib / 1024:,.0f} MiB"


def table(result: Run) -> list[str]:
    rows = [
        "| process | phase | peak RSS (sampled VmRSS) | anonymous (max RssAnon) |"
        " mapped files (max RssFile) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for peak in result.peaks.values():
        for phase, v in peak.phases.items():
            if phase in ("start", "idle", "queued", "end") or not v.get("VmRSS"):
                continue
            rows.append(
                f"| {peak.role} | {phase} | {mib(v['VmRSS'])} |"
                f" {mib(v.get('RssAnon', 0))} | {mib(v.get('RssFile', 0))} |"
            )
    return rows


def high_water(result: Run) -> str:
    """Each process's own high-water mark (VmHWM, the kernel's, over the whole run)."""
    return ", ".join(
        f"{peak.role} {mib(max(v.get('VmHWM', 0) for v in peak.phases.values()))}"
        for peak in result.peaks.values()
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--samples", type=int, default=1_000_000)
    p.add_argument("--train-seconds", type=float, default=300.0, help="then the job is cancelled")
    p.add_argument("--max-minutes", type=float, default=30.0, help="the spec's max_minutes")
    p.add_argument("--dir", type=Path, default=None, help="where the temp dir is made")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="tas-large-dataset-", dir=args.dir))
    try:
        result = run(tmp, args.samples, args.train_seconds, args.max_minutes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = table(result)
    print("\n".join(lines))
    print("VmHWM:", high_water(result))
    print(
        json.dumps({k: v for k, v in result.job.items() if k != "attempt_log"}, default=str)[:3000]
    )
    print("stages:", {k: round(v) for k, v in result.stages.items()}, "notes:", result.notes)
    if not args.no_write:
        write(args, result, lines, time.monotonic() - began)


def write(args: argparse.Namespace, result: Run, lines: list[str], secs: float) -> None:
    from bench.report import code_rev, write_section

    progress = result.job.get("progress") or {}
    assert isinstance(progress, dict)
    rate = progress.get("samples_per_second")
    rev = code_rev()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in result.stages.items())
    body = f"""
{result.samples:,} CIFAR-shaped images (3×32×32 uint8, {CLASSES} classes, each a class colour and
stripe pattern under noise): {result.samples * 3072 / 1e9:.1f} GB as bytes,
{result.samples * 3072 * 4 / 1e9:.1f} GB as float32. Written as an uncompressed NPZ
({result.npz_bytes / 2**30:.2f} GiB) a chunk at a time ({result.write_s:.0f} s), uploaded by streaming
it from disk to POST /datasets of a real `tas serve` (API + embedded worker, SQLite, local artifact
dir) in {result.upload_s:.0f} s (status {result.upload_status}), then a CNN (`channels` [16, 32],
crop augmentation, batch 256, Adam) trained on it through POST /jobs. Every process under the server
was sampled from /proc every 0.2 s: the largest resident set (VmRSS) seen per phase, and the
largest anonymous (RssAnon) and file-backed (RssFile) parts seen.

{chr(10).join(lines)}

- The kernel's high-water mark (VmHWM) of each process over the whole run: {high_water(result)}.
- Stages (wall): {stages or "n/a"}. Training was stopped (cancelled) after {args.train_seconds:.0f} s
  on 2 shared CPU cores: it reached step {progress.get("step")} of {progress.get("steps_per_epoch")}
  of epoch 1 at {rate or 0:,.0f} samples/s (last reported; the CPU is shared with other work).
  Final status: {result.job.get("final_status")}.
- **What the RSS is**: RssAnon is what the process allocated (torch and its libraries, the
  model, a batch and its float32 decode, the labels and split indices). RssFile is pages of
  memory-mapped files the process has read: in preprocess and train, the training split's scratch
  file, read whole by the normaliser's fit and the cache store, then a batch at a time by
  training (the same pages, so it does not grow); they count in the RSS while mapped, but are
  clean page cache that the kernel drops under pressure and reads again. The API never maps the
  upload: it is received into a temp file and decoded into a scratch file by `write`, a piece at
  a time, to learn its schema.

Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB;
no GPU; {rev}; {secs / 60:.0f} min in all.
Reproduce: `.venv/bin/python bench/large_dataset.py --samples {args.samples}
--train-seconds {args.train_seconds:.0f}`"""
    for note in result.notes:
        body += f"\n\nNote: {note}"
    write_section(SECTION, body)


if __name__ == "__main__":
    main()

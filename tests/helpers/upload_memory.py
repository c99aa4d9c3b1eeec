"""The API's memory while it takes a large upload: `tas serve --no-worker` in its own process, a
CSV generated on the fly and streamed to POST /datasets as multipart (never whole in the client's
memory either), and the server's resident set read from /proc: its peak while it received,
hashed, decoded and stored the upload, over its peak after a small warm-up upload (imports, the
first request's allocations), the high-water mark reset in between (`clear_refs`, value 5).

Rows are of fixed width, so the body's length is known up front (sent as Content-Length, which
the API checks against TAS_MAX_UPLOAD_MB before reading), and a block of distinct rows is
repeated: the parser sees every byte, the generator costs next to nothing."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from tests.helpers.servers import free_port, http_server

#: Feature columns of the generated CSV, each a value in [0, 1) written as `0.dddd`.
FEATURES = 16
CLASSES = 10
BLOCK_ROWS = 4096
BOUNDARY = "tas-upload-memory-boundary"


def csv_block(seed: int = 0) -> tuple[bytes, bytes]:
    """(the header line, a block of BLOCK_ROWS fixed-width rows)."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 10_000, size=(BLOCK_ROWS, FEATURES))
    header = ",".join([f"f{i}" for i in range(FEATURES)] + ["label"]) + "\n"
    rows = [
        ",".join(f"0.{v:04d}" for v in row) + f",c{i % CLASSES}\n" for i, row in enumerate(values)
    ]
    return header.encode(), "".join(rows).encode()


@dataclass(frozen=True)
class Body:
    """A multipart body of a CSV of `blocks` blocks, streamed."""

    blocks: int

    @property
    def head(self) -> bytes:
        return (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file";'
            ' filename="big.csv"\r\nContent-Type: text/csv\r\n\r\n'
        ).encode()

    @property
    def tail(self) -> bytes:
        return f"\r\n--{BOUNDARY}--\r\n".encode()

    @property
    def csv_bytes(self) -> int:
        header, block = csv_block()
        return len(header) + self.blocks * len(block)

    @property
    def rows(self) -> int:
        return self.blocks * BLOCK_ROWS

    def __len__(self) -> int:
        return len(self.head) + self.csv_bytes + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        header, block = csv_block()
        yield self.head + header
        for _ in range(self.blocks):
            yield block
        yield self.tail


def blocks_for(csv_bytes: int) -> int:
    """Blocks for a CSV of at least `csv_bytes` bytes."""
    return -(-csv_bytes // len(csv_block()[1]))


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@dataclass(frozen=True)
class Measured:
    csv_mb: float
    rows: int
    seconds: float
    status: int
    #: The server's peak resident set after the warm-up upload, and during the large one (MiB).
    warm_peak_mb: float
    upload_peak_mb: float
    samples: int | None

    @property
    def growth_mb(self) -> float:
        return self.upload_peak_mb - self.warm_peak_mb


@contextlib.contextmanager
def api_server(data_dir: Path, code: Path | None = None, **env: str) -> Iterator[tuple[str, int]]:
    """`tas serve --no-worker` on a free port: (its URL, its pid). `code`: a source tree to run
    instead of the installed one (another revision, for a before/after comparison)."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("TAS_")}
    full.update(TAS_DATA_DIR=str(data_dir), TAS_ALLOW_DOWNLOAD="false", OMP_NUM_THREADS="1")
    if code is not None:
        full["PYTHONPATH"] = str(code)
    full.update(env)
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "tas", "serve", "--no-worker", "--port", str(port)]
    with http_server(cmd, port, env=full, cwd=code, timeout=120, grace=20) as (url, proc):
        yield url, proc.pid


def measure(data_dir: Path, csv_bytes: int, code: Path | None = None, **env: str) -> Measured:
    """Upload a generated CSV of about `csv_bytes` to a fresh API and read its memory."""
    body = Body(blocks_for(csv_bytes))
    limit_mb = str(max(512, int(len(body) / 2**20) + 16))
    env = {"TAS_MAX_UPLOAD_MB": limit_mb, "TAS_UPLOAD_MAX_SAMPLES": str(body.rows + 1), **env}
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    with api_server(data_dir, code, **env) as (url, pid), httpx.Client(timeout=900) as http:
        warm = Body(2)
        r = http.post(url + "/datasets", content=bytes(b"".join(warm)), headers=headers)
        assert r.status_code == 201, r.text
        r = http.delete(url + f"/datasets/{r.json()['id']}")
        assert r.status_code == 204, r.text
        warm_peak = _status_kib(pid, "VmHWM")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak starts again from now
        start = time.perf_counter()
        r = http.post(
            url + "/datasets",
            content=iter(body),
            headers={**headers, "Content-Length": str(len(body))},
        )
        seconds = time.perf_counter() - start
        peak = _status_kib(pid, "VmHWM")
    samples = r.json()["schema"]["samples"] if r.status_code in (200, 201) else None
    return Measured(
        csv_mb=body.csv_bytes / 2**20,
        rows=body.rows,
        seconds=seconds,
        status=r.status_code,
        warm_peak_mb=warm_peak / 1024,
        upload_peak_mb=peak / 1024,
        samples=samples,
    )

"""The API's memory while it takes an upload over 1 GB: a CSV generated on the fly and streamed to
POST /datasets of a real `tas serve --no-worker` (tests/helpers/upload_memory.py), the server's
peak resident set read from /proc over its peak after a small warm-up upload.

Configurations:
  before   the code as of `--before REV` (extracted with `git archive`): the CSV parsed whole
  local    this tree, the upload kept in the local uploads directory (no TAS_ARTIFACT_URL)
  file     this tree, TAS_ARTIFACT_URL=file://… (the upload streamed to the store, no local copy)
  s3       this tree, moto's S3 server (`--s3-mb`, smaller: moto keeps objects in its memory)

    .venv/bin/python bench/upload_memory.py [--mb 1100] [--before REV] [--s3-mb 300] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.upload_memory import FEATURES, Measured, measure  # noqa: E402

SECTION = "## Upload memory"


def extract(rev: str, into: Path) -> Path:
    """The tree at `rev` (what `tas serve` imports and migrates with), without a checkout."""
    paths = ["tas", "app", "migrations"]
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, *paths], check=True, capture_output=True
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mb", type=int, default=1100, help="the CSV's size (MiB)")
    p.add_argument("--before", default=None, help="git revision before the change")
    p.add_argument("--s3-mb", type=int, default=0, help="also upload to moto's S3 (MiB); 0: no")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    began = time.monotonic()
    rows: list[tuple[str, Measured]] = []
    with tempfile.TemporaryDirectory(prefix="tas-upload-memory-") as tmp_name:
        tmp = Path(tmp_name)

        def run(name: str, size_mb: int, code: Path | None = None, **env: str) -> None:
            m = measure(tmp / f"var-{len(rows)}", size_mb << 20, code, **env)
            rows.append((name, m))
            print(
                f"{name:28} {m.csv_mb:7,.0f} MiB  {m.status}  {m.seconds:6.1f} s  peak"
                f" {m.upload_peak_mb:6,.0f} MB (after warm-up {m.warm_peak_mb:,.0f} MB,"
                f" +{m.growth_mb:,.0f} MB)",
                flush=True,
            )

        if args.before:
            run(f"before ({args.before}), local", args.mb, extract(args.before, tmp / "before"))
        run("this tree, local", args.mb)
        run("this tree, file:// store", args.mb, TAS_ARTIFACT_URL=f"file://{tmp / 'bucket'}")
        if args.s3_mb:
            from tests.helpers.s3 import s3_server

            with s3_server() as s3:
                url = f"s3://{s3.make_bucket()}/tas"
                run("this tree, S3 (moto)", args.s3_mb, TAS_ARTIFACT_URL=url, **s3.env)
    if not args.no_write:
        write(args, rows, time.monotonic() - began)


def write(args: argparse.Namespace, rows: list[tuple[str, Measured]], secs: float) -> None:
    from bench.report import code_rev, write_section

    table = [
        "| code, store | CSV | rows | status | time | peak RSS | after warm-up | growth |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in rows:
        table.append(
            f"| {name} | {m.csv_mb:,.0f} MiB | {m.rows:,} | {m.status} | {m.seconds:.0f} s"
            f" | {m.upload_peak_mb:,.0f} MB | {m.warm_peak_mb:,.0f} MB | {m.growth_mb:,.0f} MB |"
        )
    rev = code_rev()
    body = f"""
The API's memory while it takes one upload over 1 GB: `tas serve --no-worker` (SQLite), a CSV of
{FEATURES} feature columns and a class label generated on the fly and streamed to POST /datasets
as multipart with a Content-Length; the server's peak resident set (`VmHWM`) after a small
warm-up upload (imports: torch alone is most of it), reset, then during the upload: receive, hash,
parse, check and store, until the 201. `growth` is the upload's cost.

{chr(10).join(table)}

- **before**: the CSV parsed whole (`np.loadtxt` over the file): the float32 table, a copy
  without the label column and a finite mask, all at once.
- **this tree**: the CSV parsed 4 MiB of text at a time, each piece checked and its features
  written to a memory-mapped scratch file; what grows with the upload is the labels: int32 codes
  (4 bytes a row, twice while the pieces are joined) and the int64 y (8 bytes a row), about
  200 MB of the growth for 10 million rows; the rest is one piece and its temporaries. The time
  is the parse (numpy's C parser calling the label interner per row), the sha256 and the
  multipart parser, on 2 cores shared with other work.
- **file:// store**: the same, then the temp file streamed to the store in 4 MiB pieces and
  dropped: the API keeps no copy.
- **S3 (moto)**: the same through s3fs to moto's server, a smaller CSV (moto keeps every object
  in its own memory); the growth includes s3fs's multipart buffers.

Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {rev}; {secs:.0f} s.
Reproduce: `.venv/bin/python bench/upload_memory.py --mb {args.mb}"""
    body += f" --before {args.before}" if args.before else ""
    body += f" --s3-mb {args.s3_mb}" if args.s3_mb else ""
    body += "`"
    write_section(SECTION, body)


if __name__ == "__main__":
    main()

"""Peak memory of the in-memory training path: images as float32 (before) vs uint8 decoded per batch.

A CIFAR-shaped synthetic dataset (N × 3 × 32 × 32, 10 classes, and a 10,000-image test split like
CIFAR-10's) goes through `tas.core.pipeline.run_pipeline` on the CPU, with the preprocessing cache,
twice: a miss (the loader decodes, `prepare` splits, the entry is written, one epoch trains,
evaluate) and then a hit (the entry is read back, one epoch, evaluate). Each run is a fresh Python
process and reports its peak resident set (`ru_maxrss`), and the same after its imports, so the
difference is what the data path costs.

Configurations:
  before   the core as of `--before REV` (extracted with `git archive` into a temporary directory):
           the loaders turned images into float32, `prepare` normalised whole tensors, a cache
           hit read the file into memory
  uint8    this tree: uint8 images, decoded and normalised per batch, the cache entry memory-mapped
  float32  this tree fed float32 images (what an upload of decoded floats still is): isolates the
           dtype from the rest of the change

    .venv/bin/python bench/data_memory.py [--samples 50000] [--before REV] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Data memory (in-memory path)"
TEST_SAMPLES = 10_000
SHAPE = (3, 32, 32)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(args: argparse.Namespace) -> None:
    """One pipeline run in this process (the code under `--code` first on the path)."""
    sys.path.insert(0, args.code)
    import torch

    from tas.core.data.dataset import Arrays, DatasetInfo, LoadContext, Loaded
    from tas.core.hooks import NullHooks
    from tas.core.pipeline import RunContext, run_pipeline
    from tas.core.spec import JobSpec

    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    imported = peak_mb()
    info = DatasetInfo(
        "cifar_like", "classification", SHAPE, 10, [str(i) for i in range(10)], kind="image"
    )

    def images(n: int, seed: int) -> Arrays:
        g = torch.Generator().manual_seed(seed)
        X = torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        if args.dtype == "float32":  # as the loaders did before: one copy into float32, / 255
            X = X.to(torch.float32).div_(255.0)
        return Arrays(X, y)

    def load(ctx: LoadContext) -> Loaded:
        return Loaded(images(args.samples, 0), test=images(TEST_SAMPLES, 1))

    spec = JobSpec.model_validate(
        {
            "name": "mem",
            "dataset": {"id": "synthetic", "val_fraction": 0.1},
            "model": {"arch": "mlp", "hidden": [64]},
            "training": {"optimizer": "sgd", "lr": 0.01, "epochs": 1, "batch_size": 256},
        }
    )
    ctx = RunContext(
        job_dir=Path(args.job),
        datasets_dir=Path(args.job) / "datasets",
        device="cpu",
        cache_dir=Path(args.cache),
        data_fingerprint=f"sha256:synthetic-{args.dtype}-{args.samples}",
    )
    started = time.monotonic()
    result = run_pipeline(spec, info, ctx, NullHooks(), load)
    assert result.status == "succeeded"
    print(
        json.dumps(
            {
                "imported_mb": imported,
                "peak_mb": peak_mb(),
                "seconds": time.monotonic() - started,
            }
        )
    )


def measure(code: Path, dtype: str, samples: int, cache: Path, job: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", "--code", str(code), "--dtype", dtype]
    cmd += ["--samples", str(samples), "--cache", str(cache), "--job", str(job)]
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=code)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def extract(rev: str, into: Path) -> Path:
    """The tree at `rev` (its `tas` package only: what the child imports), without a checkout."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "tas"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--samples", type=int, default=50_000)
    p.add_argument("--before", default=None, help="git revision of the code before the change")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--code", default=str(ROOT), help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="uint8", help=argparse.SUPPRESS)
    p.add_argument("--cache", default="", help=argparse.SUPPRESS)
    p.add_argument("--job", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    began = time.monotonic()
    rows: list[tuple[str, str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="tas-data-memory-") as tmp_name:
        tmp = Path(tmp_name)
        configs: list[tuple[str, Path, str]] = []
        if args.before:
            configs.append((f"before ({args.before})", extract(args.before, tmp), "float32"))
        configs += [("uint8 (this tree)", ROOT, "uint8"), ("float32 (this tree)", ROOT, "float32")]
        for i, (name, code, dtype) in enumerate(configs):
            cache = tmp / f"cache-{i}"
            for phase in ("miss", "hit"):
                m = measure(code, dtype, args.samples, cache, tmp / f"job-{i}-{phase}")
                rows.append((name, phase, m))
                print(
                    f"{name:24} {phase:5} peak {m['peak_mb']:8.0f} MB"
                    f" (imports {m['imported_mb']:.0f} MB) {m['seconds']:.1f} s",
                    flush=True,
                )
            shutil.rmtree(cache, ignore_errors=True)
    if args.no_write:
        return
    write(args, rows, time.monotonic() - began)


def write(
    args: argparse.Namespace, rows: list[tuple[str, str, dict[str, float]]], secs: float
) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from bench.report import code_rev, write_section

    n = args.samples + TEST_SAMPLES
    pixels = n * 3 * 32 * 32
    table = [
        "| code, images | run | peak RSS | after imports | data path (peak − imports) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, phase, m in rows:
        table.append(
            f"| {name} | {phase} | {m['peak_mb']:,.0f} MB | {m['imported_mb']:,.0f} MB"
            f" | {m['peak_mb'] - m['imported_mb']:,.0f} MB |"
        )
    rev = code_rev()
    body = f"""
Peak resident memory of one job on the CPU through `run_pipeline`, in-memory path (the data fit),
on a CIFAR-shaped synthetic set: {args.samples:,} training + {TEST_SAMPLES:,} test images of
3 × 32 × 32, 10 classes ({pixels / 2**20:,.0f} MiB as uint8, {4 * pixels / 2**20:,.0f} MiB as
float32); val_fraction 0.1, a 3072-64-10 MLP, one epoch of batch 256, then evaluate. "miss": the
loader decodes, `prepare` splits, the preprocessing-cache entry is written; "hit": a second job
reads that entry. Each run is its own process (`ru_maxrss`).

{chr(10).join(table)}

- **before**: the core before images stayed compact: the loaders produced float32, `prepare`
  normalised whole tensors in place, a cache hit read its file into memory.
- **uint8**: images kept as uint8 through the split and the cache, decoded and normalised per batch
  on the device; a cache hit maps its file, so only the pages batches touch are resident (and they
  are the kernel's to drop).
- **float32 (this tree)**: the same code fed float32 images, as an upload of decoded floats still
  is: the saving is the dtype's, not a side effect of the rest.
- The last column also holds what any job allocates besides the data (the model, the optimizer,
  libraries imported on first use): compare rows with each other, not with the dataset's size.

Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch
{torch.__version__}, Python {platform.python_version()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC;
code {rev}; whole run {secs:.0f} s.

    .venv/bin/python bench/data_memory.py --samples {args.samples}{f" --before {args.before}" if args.before else ""}
"""
    write_section(SECTION, body)


if __name__ == "__main__":
    main()

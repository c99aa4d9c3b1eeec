"""Streaming vs in-memory training throughput on a dataset that fits.

The same job (CIFAR-shaped synthetic uint8 images, N × 3 × 32 × 32, 10 classes; the same model, batch
size and seed) runs through `tas.core.pipeline.run_pipeline` from the same preprocessing-cache entry
(a memory map), once with the data kept whole on the device (`device_data_mb` unset) and once
streamed (`device_data_mb=0`: a reader thread gathers each batch from the memory map, one batch
ahead, into pinned buffers on CUDA). Rounds alternate between the two; each round trains `--epochs`
epochs and its samples/s is the best epoch's training rate (the loop's own `samples_per_second`,
training time only). The table reports each path's best round and the ratio; the two paths'
weights are checked to be equal.

    .venv/bin/python bench/stream_throughput.py [--samples 20000] [--rounds 3] [--device cpu|cuda]
        [--models mlp,cnn] [--threads N] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/stream_throughput.py` puts bench/ first
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from bench.report import code_rev, write_section  # noqa: E402
from tas.core.data.dataset import Arrays, DatasetInfo, LoadContext, Loaded  # noqa: E402
from tas.core.hooks import NullHooks  # noqa: E402
from tas.core.pipeline import PipelineResult, RunContext, run_pipeline  # noqa: E402
from tas.core.spec import JobSpec  # noqa: E402

SECTION = "## Streaming vs in-memory throughput"
SHAPE = (3, 32, 32)
INFO = DatasetInfo(
    "cifar_like", "classification", SHAPE, 10, [str(i) for i in range(10)], kind="image"
)
MODELS: dict[str, dict[str, Any]] = {
    "mlp": {"arch": "mlp", "hidden": [256]},
    "cnn": {"arch": "cnn", "channels": [16, 32]},
}
LABELS = {"mlp": "MLP 3072-256-10", "cnn": "CNN, channels 16, 32"}


def loader(n: int) -> Any:
    def load(ctx: LoadContext) -> Loaded:
        g = torch.Generator().manual_seed(0)
        X = torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=g)
        return Loaded(Arrays(X, torch.randint(0, 10, (n,), generator=g)))

    return load


def spec(model: str, epochs: int, batch: int, device: str) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "stream",
            "dataset": {"id": "synthetic", "val_fraction": 0.05},
            "model": MODELS[model],
            "training": {
                "optimizer": "sgd",
                "lr": 0.01,
                "epochs": epochs,
                "batch_size": batch,
                "seed": 1,
            },
            "resources": {"device": device},
        }
    )


def run(
    args: argparse.Namespace, model: str, tmp: Path, job: str, streamed: bool
) -> PipelineResult:
    ctx = RunContext(
        job_dir=tmp / job,
        datasets_dir=tmp / "datasets",
        device=args.device,
        cache_dir=tmp / "cache",
        data_fingerprint=f"sha256:stream-bench-{args.samples}",
        device_data_mb=0 if streamed else None,
    )
    js = spec(model, args.epochs, args.batch, args.device)
    result = run_pipeline(js, INFO, ctx, NullHooks(), loader(args.samples))
    assert result.status == "succeeded"
    return result


def rate(result: PipelineResult) -> float:
    return max(float(r["samples_per_second"] or 0.0) for r in result.history)


def weights(result: PipelineResult) -> dict[str, torch.Tensor]:
    return load_file(str(Path(result.model_dir or "") / "model.safetensors"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--samples", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch's intra-op threads (0: its default); 1 keeps OpenMP's barriers, which a"
        " descheduled thread stalls, out of a shared machine's noise",
    )
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.monotonic()
    load_before = os.getloadavg()[0]
    results: dict[str, dict[str, list[float]]] = {}
    equal: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="tas-stream-") as name:
        tmp = Path(name)
        for model in args.models.split(","):
            run(args, model, tmp, f"{model}-warm", False)  # fills the cache entry: both read it
            rates: dict[str, list[float]] = {"in-memory": [], "streamed": []}
            last: dict[str, PipelineResult] = {}
            for i in range(args.rounds):
                for path in ("in-memory", "streamed") if i % 2 == 0 else ("streamed", "in-memory"):
                    r = run(args, model, tmp, f"{model}-{path}-{i}", path == "streamed")
                    rates[path].append(rate(r))
                    last[path] = r
                    print(
                        f"{model} {path:9} round {i}: {rates[path][-1]:,.0f} samples/s", flush=True
                    )
            a, b = weights(last["in-memory"]), weights(last["streamed"])
            equal[model] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            results[model] = rates
    if not args.no_write:
        write(args, results, equal, time.monotonic() - began, load_before)


CPU_NOTE = """
On the CPU the "device" is host memory: this measures the reader thread against gathering the batch
inline, on two cores shared with the training's own threads, not the asynchronous copy to a GPU
that streaming is built for (run with `--device cuda` on a GPU machine for that). Rounds on a shared
machine vary severalfold with its load (the per-round figures are listed): compare the best rounds.
"""


def write(
    args: argparse.Namespace,
    results: dict[str, dict[str, list[float]]],
    equal: dict[str, bool],
    secs: float,
    load_before: float,
) -> None:
    rows = [
        "| model | in-memory (best) | streamed (best) | streamed ÷ in-memory | medians ratio"
        " | weights equal | rounds, in-memory | rounds, streamed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, rates in results.items():
        mem, st = rates["in-memory"], rates["streamed"]
        med = sorted(st)[len(st) // 2] / sorted(mem)[len(mem) // 2]
        rows.append(
            f"| {LABELS[model]} | {max(mem):,.0f} | {max(st):,.0f}"
            f" | {max(st) / max(mem):.0%} | {med:.0%} | {'yes' if equal[model] else '**no**'}"
            f" | {', '.join(f'{r:,.0f}' for r in mem)} | {', '.join(f'{r:,.0f}' for r in st)} |"
        )
    rev = code_rev()
    body = f"""
Training samples/s on {args.device}, the same job from the same preprocessing-cache entry (a memory
map) with the data whole on the device vs streamed (`TAS_DEVICE_DATA_MB=0`: a reader thread
gathers each batch of the seeded order, one batch ahead); {args.samples:,} CIFAR-shaped uint8
images (3 × 32 × 32, 10 classes), val_fraction 0.05, batch {args.batch}, SGD, {args.epochs} epochs
per round (the best epoch's rate), {args.rounds} alternating rounds per path (best round shown).

{chr(10).join(rows)}

Target: streamed ≥ 90 % of in-memory on a dataset that fits.
{CPU_NOTE if args.device == "cpu" else ""}
Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch
{torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}; load
average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; {datetime.now(UTC):%Y-%m-%d %H:%M}
UTC; code {rev}; whole run {secs:.0f} s.

    .venv/bin/python bench/stream_throughput.py --samples {args.samples} --rounds {args.rounds} --device {args.device}{f" --threads {args.threads}" if args.threads else ""}
"""
    write_section(SECTION, body)


if __name__ == "__main__":
    main()

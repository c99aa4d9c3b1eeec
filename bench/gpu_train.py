"""Training throughput on a GPU: the service's loop against a plain PyTorch loop, same model, same
data, same device, same run.

Workloads:
  mlp   the seeds' model, PyTorch quickstart's 784-512-512-10 relu MLP, on 60,000 × 1 × 28 × 28
        synthetic float images, 10 classes, SGD lr 0.01, fp32, at batch 64 (the quickstart's) and 512.
  cnn   a CIFAR-10-shaped job: 50,000 × 3 × 32 × 32 synthetic uint8 images, 10 classes, tas's `cnn`
        arch with channels [64, 128, 256] (conv-relu-maxpool ×3, linear head), SGD with momentum 0.9,
        lr 0.01, batch 256, in three set-ups: fp32 with the contiguous layout; mixed precision
        (precision "auto": bf16 where the GPU has it, else fp16 with a scaler) with channels_last;
        the same plus torch.compile.

Each set-up is timed two ways:
  service  `tas.core.pipeline.run_pipeline` with the set-up in its spec (the data fit on the device,
           so batches are gathered there); samples/s from its own epoch rows (the training time of an
           epoch, validation excluded).
  plain    the textbook loop with no DataLoader: the data decoded and normalised once, on the device;
           each epoch a `randperm` on the device, batches sliced from it, forward under autocast,
           loss, zero_grad, backward (through a GradScaler for fp16), step; no per-step read-back. The
           same model (tas's builder, same seed), the same optimizer, channels_last and compile
           applied the same way (model converted, batches converted, forward compiled).
A measurement trains `--epochs` epochs; its figure is the best epoch after the first (the first pays
for cuDNN's and the allocator's warm-up, and for compile). Rounds interleave the loops so drift hits
both; the best round is reported, and the ratio service ÷ plain is taken within the same run.

    .venv/bin/python bench/gpu_train.py --device cuda [--rounds 2] [--epochs 3] [--json OUT]
    .venv/bin/python bench/gpu_train.py --device cpu --small   # the plumbing, in a minute
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/gpu_train.py` puts bench/ first, not the root
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from tas.core.data.dataset import Arrays, DatasetInfo, LoadContext, Loaded, as_float  # noqa: E402
from tas.core.device import resolve_precision, synchronize  # noqa: E402
from tas.core.models import build_model  # noqa: E402
from tas.core.pipeline import RunContext, run_pipeline  # noqa: E402
from tas.core.spec import JobSpec, ModelSpec  # noqa: E402
from tests.helpers.pipeline import RecordingHooks  # noqa: E402

CLASSES = 10


@dataclass(frozen=True)
class Setup:
    """How a workload is trained: precision (a spec value), layout and compile."""

    label: str
    precision: str
    channels_last: bool
    compile: bool


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    n: int
    shape: tuple[int, int, int]
    model: dict[str, Any]
    optimizer: dict[str, Any]
    batches: tuple[int, ...]
    setups: tuple[Setup, ...]
    uint8: bool  # images kept as bytes (decoded per batch by the service), else float in [0, 1]

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, CLASSES, (self.n,), generator=g)
        if self.uint8:
            X = torch.randint(0, 256, (self.n, *self.shape), generator=g, dtype=torch.uint8)
        else:
            X = torch.rand(self.n, *self.shape, generator=g)
        return X, y

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(
            f"synthetic_{self.name}",
            "classification",
            self.shape,
            CLASSES,
            [str(i) for i in range(CLASSES)],
            kind="image",
        )


FP32 = Setup("fp32", "fp32", False, False)


def workloads(amp: str, small: bool, compile: bool) -> list[Workload]:
    """The two workloads; `small`: the same code on a few thousand samples and a thin CNN (the
    plumbing check, on any CPU)."""
    amp_cl = Setup(f"{amp} + channels_last", amp, True, False)
    cnn_setups = [FP32, amp_cl]
    if compile:
        cnn_setups.append(Setup(f"{amp} + channels_last + compile", amp, True, True))
    return [
        Workload(
            "mlp",
            "the seeds' MLP (784-512-512-10, relu), 1 × 28 × 28 float images",
            4096 if small else 60_000,
            (1, 28, 28),
            {"arch": "mlp", "hidden": [512, 512], "activation": "relu"},
            {"optimizer": "sgd", "lr": 0.01},
            (64, 512),
            (FP32,),
            uint8=False,
        ),
        Workload(
            "cnn",
            "CIFAR-10-shaped CNN (cnn, channels "
            + ("[8, 16]" if small else "[64, 128, 256]")
            + "), 3 × 32 × 32 uint8 images",
            2048 if small else 50_000,
            (3, 32, 32),
            {"arch": "cnn", "channels": [8, 16] if small else [64, 128, 256]},
            {"optimizer": "momentum", "lr": 0.01},
            (256,),
            tuple(cnn_setups),
            uint8=True,
        ),
    ]


@dataclass
class Measure:
    samples_per_s: float
    first_epoch_s: float
    #: What the service reported using (its train stage's outputs), for the service's runs.
    used: dict[str, Any] = field(default_factory=dict)


# --- the service's loop ----------------------------------------------------------------------


def service(
    w: Workload,
    s: Setup,
    bs: int,
    X: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    epochs: int,
) -> Measure:
    spec = JobSpec.model_validate(
        {
            "name": "bench-gpu",
            "dataset": {"id": "bench", "val_fraction": 0.0, "normalize": w.uint8},
            "model": w.model,
            "training": {
                **w.optimizer,
                "epochs": epochs,
                "batch_size": bs,
                "seed": 0,
                "precision": s.precision,
                "channels_last": "on" if s.channels_last else "off",
                "compile": s.compile,
                "log_every_steps": 1_000_000,
            },
            "checkpoint": {"every_epochs": epochs, "keep_last": 1},
            "resources": {"device": device.type},
        }
    )

    def load(ctx: LoadContext) -> Loaded:
        return Loaded(Arrays(X, y))

    hooks = RecordingHooks()
    with tempfile.TemporaryDirectory() as d:
        ctx = RunContext(job_dir=Path(d) / "job", datasets_dir=Path(d), device=device.type)
        result = run_pipeline(spec, w.info, ctx, hooks, load)
    rates = [float(r["samples_per_second"]) for r in result.history]
    out = hooks.outputs("train")
    used = {k: out.get(k, "not reported") for k in ("precision", "channels_last", "compile")}
    return Measure(max(rates[1:] or rates), float(result.history[0]["epoch_seconds"]), used)


# --- the plain loop --------------------------------------------------------------------------


def plain(
    w: Workload,
    s: Setup,
    bs: int,
    X: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    epochs: int,
) -> Measure:
    """The textbook loop, no DataLoader, the data on the device (decoded and normalised once)."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(**w.model), w.shape, CLASSES).to(device)
    Xd = as_float(X).to(device) if w.uint8 else X.to(device)
    if w.uint8:  # the service's per-channel standardisation, done once up front
        std, mean = torch.std_mean(Xd, dim=(0, 2, 3), keepdim=True)
        Xd = (Xd - mean) / std
    yd = y.to(device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward: Callable[[torch.Tensor], torch.Tensor] = (
        torch.compile(model, dynamic=False) if s.compile else model
    )
    lr, momentum = w.optimizer["lr"], 0.9 if w.optimizer["optimizer"] == "momentum" else 0.0
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    precision = resolve_precision(s.precision, device)
    autocast = precision.autocast(device)
    scaler = torch.amp.GradScaler(device.type) if precision.needs_scaler else None
    loss_fn = nn.CrossEntropyLoss()
    n = len(Xd)
    seconds = []
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, device=device)
        synchronize(device)
        start = time.perf_counter()
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            xb, yb = Xd[idx], yd[idx]
            if s.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast():
                loss = loss_fn(forward(xb), yb)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    rates = [n / t for t in seconds]
    return Measure(max(rates[1:] or rates), seconds[0])


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Row:
    workload: str
    setup: str
    batch: int
    service: list[Measure] = field(default_factory=list)
    plain: list[Measure] = field(default_factory=list)

    def best(self, which: str) -> Measure:
        measures: list[Measure] = getattr(self, which)
        return max(measures, key=lambda m: m.samples_per_s)

    @property
    def ratio(self) -> float:
        return self.best("service").samples_per_s / self.best("plain").samples_per_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "setup": self.setup,
            "batch": self.batch,
            "service": [asdict(m) for m in self.service],
            "plain": [asdict(m) for m in self.plain],
            "best_service": self.best("service").samples_per_s,
            "best_plain": self.best("plain").samples_per_s,
            "ratio": self.ratio,
            "used": self.best("service").used,
        }


@contextlib.contextmanager
def quiet_compile_logs() -> Iterator[None]:
    """Inductor's warnings on the CPU (no CUDA runtime found) are noise in the bench's output."""
    import logging

    lg = logging.getLogger("torch")
    level = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(level)


def run(
    device: torch.device, rounds: int, epochs: int, small: bool, compile: bool
) -> dict[str, Any]:
    amp = resolve_precision("auto", device).name if device.type == "cuda" else "bf16"
    started = time.monotonic()
    rows: list[Row] = []
    loads = workloads(amp, small, compile)
    data = {w.name: w.data() for w in loads}
    for w in loads:
        for s in w.setups:
            rows += [Row(w.name, s.label, bs) for bs in w.batches]
    by_key = {(r.workload, r.setup, r.batch): r for r in rows}
    with quiet_compile_logs():
        for r in range(rounds):
            for w in loads:
                X, y = data[w.name]
                for s in w.setups:
                    for bs in w.batches:
                        row = by_key[(w.name, s.label, bs)]
                        row.service.append(service(w, s, bs, X, y, device, epochs))
                        row.plain.append(plain(w, s, bs, X, y, device, epochs))
                        print(
                            f"round {r + 1}/{rounds} {w.name} {s.label} batch {bs}: service"
                            f" {row.service[-1].samples_per_s:,.0f}, plain"
                            f" {row.plain[-1].samples_per_s:,.0f} samples/s",
                            flush=True,
                        )
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "amp": amp,
        "rounds": rounds,
        "epochs": epochs,
        "small": small,
        "workloads": {w.name: {"title": w.title, "samples": w.n} for w in loads},
        "rows": [row.to_dict() for row in rows],
        "seconds": round(time.monotonic() - started, 1),
    }


def table(result: dict[str, Any]) -> str:
    """The Markdown table of a run (`run`'s result)."""
    lines = [
        "| workload | set-up | batch | service samples/s | plain loop samples/s | service ÷ plain |"
        " service first epoch s | plain first epoch s | service used |",
        "|" + " --- |" * 9,
    ]
    for row in result["rows"]:
        s_first = min(m["first_epoch_s"] for m in row["service"])
        p_first = min(m["first_epoch_s"] for m in row["plain"])
        used = ", ".join(f"{k} {v}" for k, v in row["used"].items())
        lines.append(
            f"| {row['workload']} | {row['setup']} | {row['batch']} | {row['best_service']:,.0f} |"
            f" {row['best_plain']:,.0f} | {row['ratio']:.2f}× | {s_first:.1f} | {p_first:.1f} |"
            f" {used} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="per measurement (≥ 2)")
    parser.add_argument("--small", action="store_true", help="a few thousand samples: plumbing")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compile set-up")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; --device cpu --small checks the plumbing", file=sys.stderr)
        return 2
    result = run(
        torch.device(args.device), args.rounds, args.epochs, args.small, not args.no_compile
    )
    print()
    print(table(result))
    print(f"\n{result['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

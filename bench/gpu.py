"""The GPU figures in one run (`bench/gpu.sh` calls this): the GPU-marked tests, the training
benchmarks (bench/gpu_train.py: the seeds' MLP and a CIFAR-10-shaped CNN with mixed precision,
channels_last and compile, each against a plain PyTorch loop on the same device in the same run) and
the /predict benchmark (bench/predict_throughput.py, when `wrk` is installed), written as the
`## GPU` section of BENCHMARKS.md (replaced on a rerun; other sections untouched).

Each part runs in its own process, so one that fails (a test, a benchmark that crashes) is
reported in the section and the others still run; the exit status is 1 when anything failed.

    bench/gpu.sh                 # on a machine with CUDA: everything, BENCHMARKS.md updated
    bench/gpu.sh --dry-run       # anywhere: the same steps on the CPU at toy sizes (~1-2 min),
                                 # the section written to a copy of BENCHMARKS.md, not the file
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/gpu.py` puts bench/ first, not the root
    sys.path.insert(0, str(ROOT))

from bench.report import BENCHMARKS, code_rev, write_section  # noqa: E402

SECTION = "## GPU"
#: The GPU tests: tests/gpu (all marked gpu) and the CUDA test of the streamed batch path.
TESTS = [
    "tests/gpu",
    "tests/unit/tas/core/test_streaming.py::test_cuda_streaming_pinned_and_async_equals_in_memory",
]


@dataclass
class Part:
    """One step's outcome: its Markdown for the section, and whether it failed."""

    markdown: str
    failed: bool = False
    notes: list[str] = field(default_factory=list)


def _run(cmd: list[str], timeout: float, log: Path) -> tuple[int, str]:
    """Run `cmd` from the repository root, its output teed to the console and kept in `log`;
    killed past `timeout` seconds (a hung part must not hold the machine)."""
    print(f"$ {' '.join(cmd)}", flush=True)
    with log.open("w") as fh:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                fh.write(line)
        finally:
            timer.cancel()
            rc = proc.wait()
        if rc < 0:
            fh.write(f"\n[ended by signal {-rc}; the limit was {timeout:.0f} s]\n")
    return rc, log.read_text()


# --- the parts -------------------------------------------------------------------------------


def tests_part(py: str, work: Path, timeout: float) -> Part:
    xml = work / "gpu-tests.xml"
    rc, out = _run(
        [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *TESTS],
        timeout,
        work / "gpu-tests.log",
    )
    if not xml.exists():
        tail = "\n".join(out.strip().splitlines()[-5:])
        return Part(f"The GPU tests did not run (exit {rc}):\n\n```\n{tail}\n```", failed=True)
    root = ET.parse(xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    total = int(suite.get("tests", 0))
    failures = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    seconds = float(suite.get("time", 0.0))
    lines = [
        f"GPU tests (`pytest {' '.join(TESTS)}`): **{total - failures - skipped} passed,"
        f" {failures} failed, {skipped} skipped** in {seconds:.0f} s."
    ]
    for case in suite.iter("testcase"):
        name = f"{case.get('classname', '')}.{case.get('name', '')}".removeprefix("tests.")
        for kind in ("failure", "error"):
            bad = case.find(kind)
            if bad is not None:
                first = (bad.get("message") or "").strip().splitlines()
                lines.append(f"- {kind}: `{name}`: {first[0][:300] if first else ''}")
        skip = case.find("skipped")
        if skip is not None and total == skipped and len(lines) < 2:
            lines.append(f"- skipped, e.g. `{name}`: {skip.get('message', '')[:200]}")
    return Part("\n".join(lines), failed=failures > 0 or rc not in (0, 5))


def train_part(py: str, work: Path, args: argparse.Namespace, device: str) -> Part:
    from bench.gpu_train import table

    out = work / "gpu-train.json"
    options = ["--device", device, "--rounds", str(args.rounds), "--epochs", str(args.epochs)]
    if args.dry_run:
        options.append("--small")
    cmd = [py, "bench/gpu_train.py", *options, "--json", str(out)]
    rc, log = _run(cmd, args.timeout, work / "gpu-train.log")
    if rc != 0 or not out.exists():
        tail = "\n".join(log.strip().splitlines()[-8:])
        return Part(f"The training benchmark failed (exit {rc}):\n\n```\n{tail}\n```", failed=True)
    result: dict[str, Any] = json.loads(out.read_text())
    loads = "; ".join(
        f"**{name}**: {w['title']}, {w['samples']:,} samples"
        for name, w in result["workloads"].items()
    )
    md = f"""Training throughput, samples/s ({result["device"]}; mixed precision there is
{result["amp"]}): best of {result["rounds"]} interleaved rounds, each measurement {result["epochs"]}
epochs, its figure the best epoch after the first. {loads}.

{table(result)}

- **service**: `tas.core.pipeline.run_pipeline` with the set-up in the job spec (precision,
  channels_last, compile), samples/s from its own epoch rows; "service used" is what its train stage
  reported it used ("not reported": this tree's pipeline does not apply that option yet).
- **plain loop**: the textbook loop without a DataLoader on the same device in the same run: data
  decoded and normalised once on the device, a `randperm` per epoch, sliced batches, forward under
  autocast, backward (through a GradScaler for fp16), step, no per-step read-back; the same model
  (tas's builder, same seed), optimizer, layout and compile.
- **first epoch s**: the first epoch's seconds, which pay cuDNN's autotuning, the allocator's warm-up
  and, with compile, the compilation.

    .venv/bin/python bench/gpu_train.py {" ".join(options)}"""
    return Part(md)


def predict_part(py: str, work: Path, args: argparse.Namespace) -> Part:
    if args.skip_predict:
        return Part("/predict: not measured in this run (`--skip-predict`).")
    if shutil.which("wrk") is None:
        return Part(
            "/predict: **not measured**: `wrk` is not installed on this machine (`apt-get install"
            " -y wrk`, then rerun `bench/gpu.sh`)."
        )
    duration = "2" if args.dry_run else "15"
    cmd = [py, "bench/predict_throughput.py", "--duration", duration, "--rounds", "1"]
    rc, log = _run(cmd, args.timeout, work / "predict.log")
    marker = "## Predict throughput"
    if rc != 0 or marker not in log:
        tail = "\n".join(log.strip().splitlines()[-8:])
        return Part(f"The /predict benchmark failed (exit {rc}):\n\n```\n{tail}\n```", failed=True)
    body = log.split(marker, 1)[1].strip()
    return Part(
        "/predict on this machine (`bench/predict_throughput.py`, its own table; tas serves"
        " /predict on the CPU, so this measures the GPU machine's CPUs, not the GPU):\n\n" + body
    )


def machine(cuda: bool) -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    gpu = "no GPU"
    if cuda:
        gpu = f"{torch.cuda.get_device_name(0)} ×{torch.cuda.device_count()}, CUDA {torch.version.cuda}"
        smi = shutil.which("nvidia-smi")
        if smi:
            driver = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
            gpu += f", driver {driver.splitlines()[0]}" if driver else ""
    return (
        f"{gpu}; {cpu}, {os.cpu_count()} cores; torch {torch.__version__}, Python"
        f" {platform.python_version()}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="the same steps on the CPU at toy sizes; the section goes to a copy of BENCHMARKS.md",
    )
    parser.add_argument("--rounds", type=int, default=None, help="training rounds (default 2)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per training measurement")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-predict", action="store_true")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per part")
    parser.add_argument("--out", type=Path, default=None, help="the file to write the section to")
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print(
            "bench/gpu.sh: no CUDA device here (torch.cuda.is_available() is False; torch"
            f" {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}). It measures"
            " a GPU: run it on a machine with one. `bench/gpu.sh --dry-run` runs the same steps"
            " on the CPU at toy sizes (1-2 min) and writes the section to a copy of"
            " BENCHMARKS.md.",
            file=sys.stderr,
        )
        return 2
    args.rounds = args.rounds or (1 if args.dry_run else 2)
    if args.dry_run:
        args.epochs = 2
    device = "cuda" if cuda and not args.dry_run else "cpu"
    out = args.out
    if out is None:
        if args.dry_run:
            out = Path(tempfile.mkdtemp(prefix="tas-gpu-dry-")) / "BENCHMARKS.md"
            shutil.copy(BENCHMARKS, out)
        else:
            out = BENCHMARKS
    py = sys.executable
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="tas-gpu-bench-"))
    print(f"logs in {work}", flush=True)

    parts: list[Part] = []
    if args.skip_tests:
        parts.append(Part("GPU tests: not run in this run (`--skip-tests`)."))
    else:
        parts.append(tests_part(py, work, args.timeout))
    parts.append(train_part(py, work, args, device))
    parts.append(predict_part(py, work, args))

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    failed = [p for p in parts if p.failed]
    head = (
        "**Dry run on the CPU (toy sizes): the script's plumbing, not GPU figures.**\n\n"
        if args.dry_run
        else ""
    )
    body = (
        head + f"Machine: {machine(cuda)}. {when}; code {code_rev()}; whole run"
        f" {time.monotonic() - started:.0f} s; command `{' '.join(['bench/gpu.sh', *sys.argv[1:]])}`"
        + (f"; **{len(failed)} part(s) failed**" if failed else "")
        + ".\n\n"
        + "\n\n".join(p.markdown for p in parts)
    )
    write_section(SECTION, body, out)
    print(f"\nwrote the {SECTION} section of {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""/predict throughput and latency: tas against LitServe, same model, same load, one run.

Both serve the same 784-512-512-10 MLP (written with `tas.core.artifact.save_model`, with per-feature
normalisation, and registered like a succeeded job's model); LitServe loads the same safetensors
file in plain torch and applies the same normalisation. LitServe is configured with batching:
`max_batch_size=64`, `batch_timeout=0.005`, its other settings at their defaults (one API server,
one inference worker). `wrk` (Debian: `apt-get install -y wrk`) drives each with single-sample
POSTs over 64 connections; rounds alternate between the servers so drift hits both alike.
Then tas alone with 256-sample requests, for samples/s.

    .venv/bin/python bench/predict_throughput.py [--duration 15] [--rounds 2] [--write]

`--write` replaces the `## Predict throughput` section of BENCHMARKS.md."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402
from tas.core.artifact import ModelCard, save_model  # noqa: E402
from tas.core.data.prepare import Normalizer  # noqa: E402
from tas.core.models import build_model  # noqa: E402
from tas.core.spec import ModelSpec  # noqa: E402
from tests.helpers.servers import free_port  # noqa: E402

SECTION = "## Predict throughput"

LITSERVE_APP = '''
"""LitServe serving the same MLP from the same safetensors file, in plain torch."""
import json, sys
import litserve as ls
import safetensors.torch
import torch
from torch import nn


class MLP(ls.LitAPI):
    def setup(self, device):
        model_dir = sys.argv[2]
        card = json.load(open(f"{model_dir}/card.json"))
        self.model = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
            nn.Linear(512, 10),
        )
        self.model.load_state_dict(safetensors.torch.load_file(f"{model_dir}/model.safetensors"))
        self.model.eval()
        norm = card["normalization"]
        self.mean = torch.tensor(norm["mean"]).reshape(norm["shape"])
        self.std = torch.tensor(norm["std"]).reshape(norm["shape"])

    def decode_request(self, request):
        return torch.tensor(request["inputs"], dtype=torch.float32)

    def predict(self, x):
        with torch.inference_mode():
            probs = torch.softmax(self.model((x - self.mean) / self.std), dim=1)
        return probs

    def unbatch(self, output):
        return list(output)

    def encode_response(self, probs):
        return {"label": int(probs.argmax()), "probabilities": probs.tolist()}


if __name__ == "__main__":
    api = MLP(max_batch_size=64, batch_timeout=0.005)
    server = ls.LitServer(api, accelerator="cpu")
    server.run(port=int(sys.argv[1]), log_level="warning", generate_client_file=False)
'''

WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()
"""


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    bad: int  # non-2xx responses + socket errors

    def row(self, label: str, samples: int = 1) -> str:
        extra = f" | {self.rps * samples:,.0f}" if samples > 1 else ""
        return (
            f"| {label} | {self.rps:,.0f}{extra} | {self.p50_ms:.1f} | {self.p99_ms:.1f} |"
            f" {self.requests:,} | {self.bad} |"
        )


def write_model(data_dir: Path) -> tuple[str, Path]:
    """The 784-512-512-10 MLP as a registered version of a succeeded job; returns its job id."""
    from tas.settings import Settings
    from tas.store import jobs as job_store
    from tas.store import registry as registry_store
    from tas.store.engine import make_engine, make_sessionmaker
    from tas.store.migrate import upgrade
    from tas.store.orm import JobStatus

    settings = Settings(data_dir=data_dir)
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    torch.manual_seed(0)
    spec = ModelSpec(arch="mlp", hidden=[512, 512])
    model = build_model(spec, (784,), 10)
    norm = Normalizer(torch.rand(784) * 0.5, torch.rand(784) + 0.5, "per_feature")
    card = ModelCard(
        arch=spec.model_dump(mode="json"),
        input_shape=[784],
        task="classification",
        output="softmax",
        out_dim=10,
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        normalization=norm.to_dict(),
    )
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    with sessions() as s:
        job = job_store.create_job(s, {"name": "bench-mlp"}, tenant="default", max_attempts=1)
        job.status = JobStatus.succeeded.value
        model_dir = settings.resolved_artifact_dir / job.id / "model"
        card = save_model(model_dir, model, card)
        registry_store.register_model(s, job, str(model_dir), card.model_dump(mode="json"), None)
        s.commit()
        return job.id, model_dir


@contextlib.contextmanager
def server(cmd: list[str], env: dict[str, str], health: str, log: Path) -> Iterator[None]:
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited: {log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(health, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd} did not start: {log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(url: str, body: Path, lua: Path, *, connections: int, duration: float) -> Load:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", str(lua), url],
        env={**os.environ, "BODY_FILE": str(body)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lat = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)$", out, re.M))
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


def check_same_answer(tas_url: str, ls_url: str, job_id: str, sample: list[float]) -> float:
    """Both servers answer the same sample with the same probabilities (sanity, not speed)."""
    a = httpx.post(tas_url, json={"model": job_id, "inputs": [sample]}, timeout=30)
    b = httpx.post(ls_url, json={"inputs": sample}, timeout=30)
    a.raise_for_status()
    b.raise_for_status()
    pa = np.array(a.json()["predictions"][0]["probabilities"])
    pb = np.array(b.json()["probabilities"])
    return float(np.abs(pa - pb).max())


def machine() -> str:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True
        ).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    return f"{model}, {os.cpu_count()} cores (lscpu), torch {torch.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per server")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    ap.add_argument(
        "--tas-env", action="append", default=[], help="KEY=VALUE for tas (tuning experiments)"
    )
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")

    tmp = Path(tempfile.mkdtemp(prefix="tas-predict-bench-"))
    job_id, model_dir = write_model(tmp / "var")
    rng = np.random.default_rng(0)
    sample = [round(float(v), 6) for v in rng.random(784)]
    lua = tmp / "post.lua"
    lua.write_text(WRK_LUA)
    bodies = {
        "tas": tmp / "tas.json",
        "litserve": tmp / "litserve.json",
        "tas256": tmp / "tas256.json",
    }
    bodies["tas"].write_text(json.dumps({"model": job_id, "inputs": [sample]}))
    bodies["litserve"].write_text(json.dumps({"inputs": sample}))
    big = [[round(float(v), 6) for v in row] for row in rng.random((256, 784))]
    bodies["tas256"].write_text(json.dumps({"model": job_id, "inputs": big}))
    ls_app = tmp / "litserve_app.py"
    ls_app.write_text(LITSERVE_APP)

    tas_port, ls_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAS_")}
    env["TAS_DATA_DIR"] = str(tmp / "var")
    # LitServe runs at log_level=warning, so no access log; tas likewise.
    tas_env = {**env, "TAS_ACCESS_LOG": "false", **dict(kv.split("=", 1) for kv in args.tas_env)}
    tas_cmd = [sys.executable, "-m", "tas", "serve", "--no-worker", "--port", str(tas_port)]
    ls_cmd = [sys.executable, str(ls_app), str(ls_port), str(model_dir)]
    tas_url = f"http://127.0.0.1:{tas_port}/predict"
    ls_url = f"http://127.0.0.1:{ls_port}/predict"
    results: dict[str, list[Load]] = {"tas": [], "litserve": []}
    with (
        server(tas_cmd, tas_env, f"http://127.0.0.1:{tas_port}/healthz", tmp / "tas.log"),
        server(ls_cmd, env, f"http://127.0.0.1:{ls_port}/health", tmp / "litserve.log"),
    ):
        diff = check_same_answer(tas_url, ls_url, job_id, sample)
        print(f"same sample, max |p_tas - p_litserve| = {diff:.2e}")
        for name, url in (("tas", tas_url), ("litserve", ls_url)):  # warm-up
            wrk(url, bodies[name], lua, connections=args.connections, duration=3)
        for r in range(args.rounds):
            for name, url in (("tas", tas_url), ("litserve", ls_url)):
                load = wrk(
                    url, bodies[name], lua, connections=args.connections, duration=args.duration
                )
                results[name].append(load)
                print(f"round {r + 1} {name:9s} {load.row(name)}")
        big_load = wrk(tas_url, bodies["tas256"], lua, connections=8, duration=args.duration)
        print(f"tas, 256-sample requests: {big_load.row('tas', 256)}")

    best = {name: max(loads, key=lambda x: x.rps) for name, loads in results.items()}
    ratio = best["tas"].rps / best["litserve"].rps
    verdict = (
        f"tas / LitServe requests/s = **{ratio:.2f}×** (target ≥ 1.5×); p99 {best['tas'].p99_ms:.1f}"
        f" ms vs {best['litserve'].p99_ms:.1f} ms"
        f" ({'no worse' if best['tas'].p99_ms <= best['litserve'].p99_ms else 'WORSE'})."
    )
    print(verdict)
    cmd = "apt-get install -y wrk && .venv/bin/python bench/predict_throughput.py" + (
        f" --duration {args.duration:g} --rounds {args.rounds}"
    )
    header = "| server | requests/s | p50 ms | p99 ms | requests | failed |\n| --- | --- | --- | --- | --- | --- |"
    rows = [best[n].row(f"{n} (best of {args.rounds})") for n in ("tas", "litserve")] + [
        load.row(f"{n} round {i + 1}")
        for n in ("tas", "litserve")
        for i, load in enumerate(results[n])
    ]
    section = "\n".join(
        [
            SECTION,
            "",
            f"Machine: {machine()}. Command: `{cmd} --write`.",
            "",
            f"Single-sample POSTs of a 784-float sample to a 784-512-512-10 MLP, {args.connections}"
            f" connections, `wrk -t1`, {args.duration:g} s per run, rounds alternating between the"
            " servers (both running, on the same 2 cores as wrk). LitServe: `max_batch_size=64`,"
            ' `batch_timeout=0.005`, `log_level="warning"`, defaults otherwise; tas: `tas serve'
            " --no-worker` with `TAS_ACCESS_LOG=false` and default serving settings"
            " (`TAS_PREDICT_MAX_BATCH=64`, `TAS_PREDICT_MAX_WAIT_MS=1`).",
            "",
            header,
            *rows,
            "",
            verdict,
            "",
            f"256-sample requests (8 connections): {big_load.rps:,.0f} requests/s ="
            f" **{big_load.rps * 256:,.0f} samples/s**, p50 {big_load.p50_ms:.1f} ms, p99"
            f" {big_load.p99_ms:.1f} ms, {big_load.bad} failed.",
            "",
        ]
    )
    print(section)
    if args.write:
        write_section(SECTION, section.split("\n", 1)[1])
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

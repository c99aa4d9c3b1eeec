"""Soak: kill -9 workers at random while jobs train; nothing may be lost, nothing may run
twice at once, and every resumed job must end with the weights of an uninterrupted run.

Starts its own redis-server and PostgreSQL (tests/helpers/servers.py), `tas migrate`, `tas serve --no-worker`
and two `tas worker`s (tests/helpers/stack.py), with short leases. Phase 1 runs each distinct
spec once with no kills (the reference weights). Phase 2 submits --jobs jobs and, while they run,
SIGKILLs a random worker's whole process group --kills times at random moments, starting a fresh
worker after each kill. Then it reads the workers' run journals (`claimed job … attempt … as …`,
`settled job … as … (owner …)`) and the artifacts, prints a table, writes the `## Soak`
section of BENCHMARKS.md, and exits 1 if a must-be-0 figure is not 0.

    .venv/bin/python bench/soak.py [--jobs 12] [--kills 5] [--seed 0] [--timeout 240]

Not a test: it takes minutes and needs redis-server and PostgreSQL installed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/soak.py` puts bench/ first, not the repo root
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from bench.report import write_section  # noqa: E402
from tests.helpers.s3 import s3_server  # noqa: E402
from tests.helpers.servers import start_postgres, start_redis  # noqa: E402
from tests.helpers.stack import FINISHED, Proc, Stack, distributed_stack, spawn  # noqa: E402

SECTION = "## Soak"
BENCHMARKS = ROOT / "BENCHMARKS.md"

#: Short leases so that a killed worker's job is taken over within seconds.
SOAK_ENV = {
    "TAS_LEASE_SECONDS": "3",
    "TAS_HEARTBEAT_SECONDS": "0.5",
    "TAS_REAPER_INTERVAL_S": "1",
    "TAS_REQUEUE_AFTER_S": "3",
}


def soak_env(kills: int) -> dict[str, str]:
    """The attempt budget outnumbers the kills: the soak asks whether kills lose jobs or run them
    twice, not where `max_attempts` stops a crash loop. With interrupted jobs resumed ahead of new
    ones, a fresh worker takes the job just interrupted, so one job can take many kills in a row
    (60 jobs, 30 kills and a budget of 10: two jobs were killed 10 times each, never reaching their
    next checkpoint, and failed with MaxAttemptsExceeded as designed)."""
    return {**SOAK_ENV, "TAS_MAX_ATTEMPTS": str(max(10, kills + 1))}


console = Console()


# ------------------------------------------------------------------------------------------------
# Job specs: small digits MLPs, a few seconds each, that differ in what a resume must restore
# (dropout RNG, momentum buffers, Adam moments, scheduler position).


def _spec(name: str, model: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": {"name": "digits", "val_fraction": 0.2},
        "model": {"arch": "mlp", **model},
        "training": {"batch_size": 32, **training},
        "checkpoint": {"every_epochs": 1, "keep_last": 2},
    }


SPECS: dict[str, dict[str, Any]] = {
    "soak-adam": _spec(
        "soak-adam",
        {"hidden": [256, 128], "dropout": 0.1},
        {"epochs": 12, "optimizer": "adam", "lr": 0.001, "scheduler": "cosine", "seed": 1},
    ),
    "soak-momentum": _spec(
        "soak-momentum",
        {"hidden": [128], "activation": "tanh"},
        {
            "epochs": 12,
            "optimizer": "momentum",
            "lr": 0.02,
            "scheduler": "step",
            "step_size": 4,
            "gamma": 0.5,
            "seed": 2,
        },
    ),
    "soak-adamw": _spec(
        "soak-adamw",
        {"hidden": [192, 192], "dropout": 0.2, "activation": "gelu"},
        {"epochs": 12, "optimizer": "adamw", "lr": 0.002, "weight_decay": 0.01, "seed": 3},
    ),
}


# ------------------------------------------------------------------------------------------------
# The run journal: worker logs → attempt intervals.

_STAMP = r"(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
CLAIMED = re.compile(
    _STAMP + r".*claimed job (?P<job>\S+) attempt (?P<attempt>\d+) as (?P<owner>\S+)"
)
SETTLED = re.compile(
    _STAMP + r".*settled job (?P<job>\S+) as (?P<status>\S+) \(owner (?P<owner>\S+)\)"
)
# A delivery that started no run: refused by a pool child's claim, or dropped by the worker's main
# process before any child saw it (the job finished, cancelled, or running under a live lease).
NOT_CLAIMED = re.compile(_STAMP + r".*(?:job \S+ not claimed|dropped message for job \S+)")


def _ts(stamp: str) -> float:
    """`logging`'s asctime (local time, milliseconds) as a Unix time."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


@dataclass
class Worker:
    """One `tas worker` incarnation: its own Celery node name, so owners map back to it."""

    node: str
    proc: Proc
    started: float
    killed_at: float | None = None
    survivors: int = 0  # processes of its group still alive after the SIGKILL


@dataclass
class Attempt:
    job_id: str
    attempt: int
    owner: str
    start: float
    end: float | None = None
    settled_as: str | None = None
    ended_by: str = "open"  # "settled" | "killed" | "open"

    @property
    def node(self) -> str:
        return self.owner.split("/", 1)[0]


@dataclass
class Journal:
    attempts: list[Attempt] = field(default_factory=list)
    refused_deliveries: int = 0
    unmatched_settles: int = 0


def read_journal(workers: list[Worker], now: float) -> Journal:
    journal = Journal()
    by_owner: dict[tuple[str, str], Attempt] = {}
    for w in workers:
        for line in w.proc.log.read_text(errors="replace").splitlines():
            if m := CLAIMED.match(line):
                a = Attempt(m["job"], int(m["attempt"]), m["owner"], _ts(m["ts"]))
                by_owner[(a.job_id, a.owner)] = a
                journal.attempts.append(a)
            elif m := SETTLED.match(line):
                a_or_none = by_owner.get((m["job"], m["owner"]))
                if a_or_none is None:  # a delivery that claimed nothing also logs its settlement
                    if m["status"] != "skipped":
                        journal.unmatched_settles += 1
                    continue
                a_or_none.end, a_or_none.settled_as = _ts(m["ts"]), m["status"]
                a_or_none.ended_by = "settled"
            elif NOT_CLAIMED.match(line):
                journal.refused_deliveries += 1
    nodes = {w.node: w for w in workers}
    for a in journal.attempts:
        if a.end is not None:
            continue
        owner_worker = nodes.get(a.node)
        if owner_worker is not None and owner_worker.killed_at is not None:
            a.end, a.ended_by = owner_worker.killed_at, "killed"
        else:  # never settled and its worker was not killed: it may still be running
            a.end = now
    return journal


def overlapping_jobs(journal: Journal) -> dict[str, list[tuple[Attempt, Attempt]]]:
    """Jobs two of whose attempt intervals overlap: the job ran twice at once."""
    per_job: dict[str, list[Attempt]] = {}
    for a in journal.attempts:
        per_job.setdefault(a.job_id, []).append(a)
    found: dict[str, list[tuple[Attempt, Attempt]]] = {}
    for job_id, attempts in per_job.items():
        attempts.sort(key=lambda a: a.start)
        for i, a in enumerate(attempts):
            for b in attempts[i + 1 :]:
                assert a.end is not None
                if b.start < a.end:
                    found.setdefault(job_id, []).append((a, b))
    return found


def takeover_seconds(
    attempts: list[Attempt], requeued: dict[str, list[float]]
) -> tuple[list[float], list[float]]:
    """For each attempt cut short by a kill: seconds until the job was seen `queued` again (the
    lease expired and the reaper took it back), and until its next attempt was claimed."""
    to_queued, to_claim = [], []
    for a in attempts:
        if a.ended_by != "killed" or a.end is None:
            continue
        back = [t for t in requeued.get(a.job_id, []) if t >= a.end]
        if back:
            to_queued.append(min(back) - a.end)
        later = [b.start for b in attempts if b.job_id == a.job_id and b.attempt > a.attempt]
        if later:
            to_claim.append(min(later) - a.end)
    return to_queued, to_claim


def _max_mean(xs: list[float]) -> str:
    return f"{max(xs):.1f} s / {sum(xs) / len(xs):.1f} s" if xs else "-"


def broker_backlog(redis_url: str) -> int:
    """Messages still waiting in the broker's queues (all jobs are finished by now)."""
    import redis as redis_client

    r = redis_client.Redis.from_url(redis_url)
    try:
        return sum(int(r.llen(q)) for q in ("default", "cpu", "gpu"))
    finally:
        r.close()


# ------------------------------------------------------------------------------------------------
# Artifacts


def model_file(data_dir: Path, job_id: str) -> Path | None:
    found = [
        p
        for p in (data_dir / "artifacts" / "jobs" / job_id).rglob("model.safetensors")
        if "checkpoint" not in str(p.relative_to(data_dir))
    ]
    return found[0] if len(found) == 1 else None


@dataclass
class Models:
    """Where a succeeded job's model.safetensors is read: the shared artifact directory, or the
    bucket (the job's model bundle, every byte checked against its manifest), fetched to `tmp`."""

    data_dir: Path
    store_url: str | None = None
    tmp: Path | None = None

    def fetch(self, job_id: str) -> Path | None:
        if self.store_url is None:
            return model_file(self.data_dir, job_id)
        from tas.core.objstore import ObjectStoreError, open_bundle, open_store

        assert self.tmp is not None
        try:
            bundle = open_bundle(open_store(self.store_url), f"jobs/{job_id}/model")
            return bundle.fetch("model.safetensors", self.tmp / f"{job_id}.safetensors")
        except (ObjectStoreError, FileNotFoundError):
            return None


def same_weights(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


# ------------------------------------------------------------------------------------------------
# The soak


@dataclass
class Soak:
    stack: Stack
    rng: random.Random
    #: Each worker incarnation gets a data directory of its own (scratch, caches): with an object
    #: store, workers share nothing but Redis, PostgreSQL and the bucket.
    own_dirs: bool = False
    workers: list[Worker] = field(default_factory=list)
    serial: int = 0
    #: When the poller first saw each job back in `queued` after being `running` (kill → reaped).
    requeued: dict[str, list[float]] = field(default_factory=dict)
    _last: dict[str, str] = field(default_factory=dict)

    def start_worker(self) -> Worker:
        self.serial += 1
        node = f"soak{self.serial}@{platform.node()}"
        if self.own_dirs:
            env = {**self.stack.env, "TAS_DATA_DIR": str(self.stack.logdir / f"w{self.serial}")}
            args = ["worker", "--queues", "default,cpu", "--hostname", node]
            proc = spawn(f"worker-{self.serial}", args, env, self.stack.logdir)
            self.stack.procs.append(proc)
        else:
            proc = self.stack.start_worker(f"worker-{self.serial}", "--hostname", node)
        w = Worker(node, proc, time.time())
        self.workers.append(w)
        return w

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.killed_at is None]

    def busy(self) -> list[Worker]:
        """Live workers with a claimed, unsettled attempt in their journal."""
        journal = read_journal(self.workers, time.time())
        running = {a.node for a in journal.attempts if a.ended_by == "open"}
        return [w for w in self.live() if w.node in running]

    def kill(self, w: Worker) -> None:
        """SIGKILL the worker's whole process group (main process and pool child): a lost machine."""
        pgid = w.proc.popen.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        w.proc.popen.wait()
        w.killed_at = time.time()
        # A SIGKILLed process cannot run another instruction, but the kernel may take a moment to
        # tear down a large one: only what is still there after a few seconds counts as a survivor.
        deadline = time.monotonic() + 5
        while (left := _group_size(pgid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        w.survivors = left

    def statuses(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        jobs = {job_id: self.stack.job(job_id) for job_id in ids}
        now = time.time()
        for job_id, j in jobs.items():
            if self._last.get(job_id) == "running" and j["status"] == "queued":
                self.requeued.setdefault(job_id, []).append(now)
            self._last[job_id] = j["status"]
        return jobs


def _group_size(pgid: int) -> int:
    n = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            n += 1
    return n


def wait_all(
    soak: Soak,
    ids: list[str],
    deadline: float,
    *,
    kills: int = 0,
    gap: tuple[float, float] = (0, 0),
    any_worker: bool = False,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Poll until every job is finished or the deadline; meanwhile do up to `kills` kills.

    A kill is due a random `gap` after the previous one; its victim is a random worker among those
    running a job at that moment (any live worker with `any_worker`), so that kills interrupt
    training rather than mostly hit a worker that is still starting up."""
    kill_log: list[dict[str, Any]] = []
    next_kill = time.monotonic() + soak.rng.uniform(*gap)
    jobs = soak.statuses(ids)
    while time.monotonic() < deadline:
        jobs = soak.statuses(ids)
        if all(j["status"] in FINISHED for j in jobs.values()):
            break
        due = len(kill_log) < kills and time.monotonic() >= next_kill
        victims = (soak.live() if any_worker else soak.busy()) if due else []
        if victims:
            victim = soak.rng.choice(victims)
            running = [j["id"] for j in jobs.values() if j["status"] == "running"]
            soak.kill(victim)
            replacement = soak.start_worker()
            kill_log.append(
                {
                    "at": victim.killed_at,
                    "node": victim.node,
                    "replacement": replacement.node,
                    "running_jobs": running,
                }
            )
            console.print(
                f"  kill {len(kill_log)}/{kills}: SIGKILL {victim.node} (pgid {victim.proc.popen.pid});"
                f" started {replacement.node}"
            )
            next_kill = time.monotonic() + soak.rng.uniform(*gap)
        time.sleep(0.25)
    return jobs, kill_log


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def code_version() -> str:
    """The commit the service code came from, and whether core/app/tas/worker had local edits."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "core", "app", "tas", "worker", "migrations"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{sha}{' + uncommitted edits' if dirty else ''}" if sha else "unknown"


def main(
    jobs: Annotated[int, typer.Option(help="Jobs submitted in the kill phase.")] = 12,
    kills: Annotated[int, typer.Option(help="Worker process groups SIGKILLed.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the kill schedule and victims.")] = 0,
    timeout: Annotated[
        float, typer.Option(help="Seconds the kill phase's jobs have to succeed.")
    ] = 240.0,
    min_gap: Annotated[float, typer.Option(help="Shortest wait between kills (s).")] = 2.0,
    max_gap: Annotated[float, typer.Option(help="Longest wait between kills (s).")] = 8.0,
    any_worker: Annotated[
        bool, typer.Option(help="Pick victims among all live workers, busy or not.")
    ] = False,
    write: Annotated[bool, typer.Option(help="Write the BENCHMARKS.md section.")] = True,
    keep: Annotated[bool, typer.Option(help="Keep the work dir (logs, artifacts).")] = False,
    store: Annotated[
        str,
        typer.Option(
            help="local: artifacts in the data dir the API and workers share; s3: in a bucket of"
            " moto's S3 server, every process with a data dir of its own."
        ),
    ] = "local",
) -> None:
    if store not in ("local", "s3"):
        raise typer.BadParameter("local or s3", param_hint="--store")
    t0 = time.monotonic()
    code_before = code_version()
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="tas-soak-"))
    console.print(f"soak: work dir {tmp}")
    redis = start_redis(tmp)
    postgres = start_postgres(tmp)
    failed_run = True
    servers = contextlib.ExitStack()
    store_env: dict[str, str] = {}
    if store == "s3":
        s3 = servers.enter_context(s3_server())
        store_env = {**s3.env, "TAS_ARTIFACT_URL": f"s3://{s3.make_bucket()}/artifacts"}
        os.environ.update(s3.env)  # this process reads the models from the bucket too
        (tmp / "models").mkdir()
    try:
        with (
            servers,
            distributed_stack(
                tmp,
                database_url=postgres.url,
                broker_url=redis.url,
                workers=0,
                **soak_env(kills),
                **store_env,
            ) as stack,
        ):
            soak = Soak(stack, rng, own_dirs=store == "s3")
            models = Models(stack.data_dir, store_env.get("TAS_ARTIFACT_URL"), tmp / "models")
            soak.start_worker()
            soak.start_worker()

            # Phase 1: each distinct spec once, nobody killed: the reference weights.
            console.print(f"phase 1: {len(SPECS)} reference jobs, no kills")
            t_ref = time.monotonic()
            ref_ids = {key: stack.submit(spec)["id"] for key, spec in SPECS.items()}
            refs, _ = wait_all(soak, list(ref_ids.values()), time.monotonic() + timeout)
            ref_seconds = time.monotonic() - t_ref
            bad_refs = [
                j for j in refs.values() if j["status"] != "succeeded" or j["attempts"] != 1
            ]
            if bad_refs:
                console.print(
                    f"[red]reference jobs did not succeed in one attempt:[/red] {bad_refs}"
                )
                print(stack.logs(), file=sys.stderr)
                raise typer.Exit(2)
            ref_model: dict[str, Path] = {}
            for key, job_id in ref_ids.items():
                path = models.fetch(job_id)
                if path is None:
                    console.print(f"[red]no model.safetensors for reference {key} ({job_id})[/red]")
                    raise typer.Exit(2)
                ref_model[key] = path

            # Phase 2: the soak.
            console.print(f"phase 2: {jobs} jobs, {kills} kills (seed {seed})")
            t_soak = time.monotonic()
            keys = list(SPECS)
            spec_of: dict[str, str] = {}
            for i in range(jobs):
                key = keys[i % len(keys)]
                spec_of[stack.submit(SPECS[key])["id"]] = key
            ids = list(spec_of)
            final, kill_log = wait_all(
                soak,
                ids,
                t_soak + timeout,
                kills=kills,
                gap=(min_gap, max_gap),
                any_worker=any_worker,
            )
            soak_seconds = time.monotonic() - t_soak
            journal = read_journal(soak.workers, time.time())

            # Figures.
            lost = [job_id for job_id, j in final.items() if j["status"] != "succeeded"]
            overlaps = overlapping_jobs(journal)
            resumed = [job_id for job_id, j in final.items() if j["attempts"] > 1]
            differ_resumed: list[str] = []
            differ_other: list[str] = []
            missing_model: list[str] = []
            for job_id, j in final.items():
                if j["status"] != "succeeded":
                    continue
                path = models.fetch(job_id)
                if path is None:
                    missing_model.append(job_id)
                    continue
                if not same_weights(ref_model[spec_of[job_id]], path):
                    (differ_resumed if j["attempts"] > 1 else differ_other).append(job_id)
            soak_attempts = [a for a in journal.attempts if a.job_id in final]
            total_attempts = sum(int(j["attempts"]) for j in final.values())
            interrupting = sum(
                1
                for k in kill_log
                if any(a.node == k["node"] and a.ended_by == "killed" for a in soak_attempts)
            )
            survivors = sum(w.survivors for w in soak.workers)
            to_queued, to_claim = takeover_seconds(soak_attempts, soak.requeued)
            backlog = broker_backlog(redis.url)
            statuses: dict[str, int] = {}
            for j in final.values():
                statuses[j["status"]] = statuses.get(j["status"], 0) + 1

        wall = time.monotonic() - t0
        code = code_version()
        if code != code_before:  # workers restarted after a kill would have run other code
            code = f"changed during the run ({code_before} → {code})"
        must_be_zero = {
            "jobs lost (not succeeded by the deadline)": len(lost),
            "jobs run twice at once (overlapping attempts)": len(overlaps),
            "resumed jobs whose weights differ from the reference": len(differ_resumed),
            "uninterrupted jobs whose weights differ from the reference": len(differ_other),
            "succeeded jobs without a model.safetensors": len(missing_model),
            "processes alive in a group after its SIGKILL": survivors,
        }
        info = {
            "jobs submitted (kill phase)": jobs,
            "job statuses": ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())),
            "kills done": f"{len(kill_log)} of {kills}",
            "kills that interrupted a running attempt": interrupting,
            "total attempts (sum of jobs' attempts)": total_attempts,
            "attempts in the workers' journal": len(soak_attempts),
            "resumed jobs (attempts > 1)": len(resumed),
            "max attempts of one job": max((int(j["attempts"]) for j in final.values()), default=0),
            "kill → interrupted job queued again (max / mean)": _max_mean(to_queued),
            "kill → interrupted job claimed again (max / mean)": _max_mean(to_claim),
            "duplicate deliveries refused (`not claimed` or dropped before a fork)": journal.refused_deliveries,
            "messages left in the broker after all jobs finished": backlog,
            "reference phase (3 specs, no kills)": f"{ref_seconds:.1f} s",
            "kill phase": f"{soak_seconds:.1f} s",
            "wall time (servers included)": f"{wall:.1f} s",
        }
        table = Table(title=f"tas soak: {jobs} jobs, {kills} kills, seed {seed}")
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_column("must be 0")
        for name, value in must_be_zero.items():
            style = "green" if value == 0 else "bold red"
            table.add_row(name, f"[{style}]{value}[/{style}]", "yes")
        for name, shown in info.items():
            table.add_row(name, str(shown), "")
        console.print(table)
        console.print(f"machine: {machine()}; code: {code}")
        for job_id, pairs in overlaps.items():
            for a, b in pairs:
                console.print(
                    f"[red]overlap[/red] job {job_id}: attempt {a.attempt} {a.owner}"
                    f" [{a.start:.3f}, {a.end}] ({a.ended_by}) and attempt {b.attempt} {b.owner}"
                    f" from {b.start:.3f}"
                )
        for job_id in lost:
            console.print(f"[red]lost[/red] {job_id}: {final[job_id]['status']} {final[job_id]}")
        for job_id in differ_resumed + differ_other:
            console.print(f"[red]weights differ[/red] {job_id} ({spec_of[job_id]})")

        failed_run = any(must_be_zero.values())
        if write:
            command = shlex.join(
                [".venv/bin/python", "bench/soak.py", *[a for a in sys.argv[1:] if a != "--keep"]]
            )
            rows = "\n".join(
                f"| {name} | {value} | {'yes' if name in must_be_zero else ''} |"
                for name, value in {**must_be_zero, **info}.items()
            )
            victims = "any live worker" if any_worker else "a random worker that is running a job"
            stack_text = (
                "sharing one data directory (the artifacts in it)"
                if store == "local"
                else "the artifacts in a bucket of moto's S3 server (`TAS_ARTIFACT_URL=s3://…`),"
                " each process (and each fresh worker) with a data directory of its own, so a"
                " job resumes on another worker from the checkpoints in the bucket; every model"
                " is read back from its bundle, checked against its manifest"
            )
            body = f"""
- **What**: SIGKILL the whole process group (main process and prefork child) of {victims}, at
  random moments ({min_gap:g}–{max_gap:g} s apart), start a fresh worker after each kill, then
  check what the database, the workers' logs and the artifacts say.
- **Stack**: real redis-server and PostgreSQL, `tas serve --no-worker` and two `tas worker`s
  (prefork, a fresh child per job), {stack_text}, leases shortened for the soak:
  `{" ".join(f"{k}={v}" for k, v in soak_env(kills).items())}`.
- **Jobs**: digits MLPs, three specs ({", ".join(SPECS)}: dropout, momentum, Adam/AdamW moments,
  cosine and step schedules), 12 epochs, a checkpoint every epoch. Each spec first runs once with
  no kills for the reference weights; every soak job's `model.safetensors` is compared with its
  reference tensor by tensor (`torch.equal`).
- **Run twice at once**: a job two of whose attempt intervals overlap, an interval being a
  worker's `claimed job` log line to its `settled job` line, or to the SIGKILL of its process group.
- **Messages left in the broker**: duplicate publishes of jobs that were only waiting their turn
  (the reaper republishes every job queued longer than `TAS_REQUEUE_AFTER_S`); harmless to
  correctness, since a claim is exclusive, but each one costs a worker a fresh child when consumed.

```
{command}
```

Machine: {machine()}. Code: {code}. Run {datetime.now().strftime("%Y-%m-%d %H:%M")}; result:
**{"FAIL" if failed_run else "pass"}**.

| figure | value | must be 0 |
| --- | --- | --- |
{rows}
"""
            heading = SECTION if store == "local" else f"{SECTION} (object store)"
            write_section(heading, body)
            console.print(f"wrote the {heading!r} section of {BENCHMARKS}")
    finally:
        redis.kill()
        postgres.stop()
        if keep or failed_run:
            console.print(f"soak: logs and artifacts kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if failed_run:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)

"""The `tas jobs`, `tas datasets`, `tas models` and `tas searches` verbs: a terminal on a (local or remote) tas API,
built on `tas.client` alone, so they need no database, no torch import and no server code; the
contract test (tests/unit/test_import_contract.py) holds this module to that.

Exit codes, the same for every verb, so a script can branch on them: 0 the job succeeded (or the
call did), 1 it failed, 2 it was cancelled, 3 a usage or connection error (a refused request, an
unreachable server, a wait that timed out), 130 detached with Ctrl-C (the job keeps running).

Output: tables and a live progress bar on a terminal; plain lines when standard output is not one
(a pipe, a CI log), and `-o json` for the API's own objects.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table
from typer.core import TyperGroup

from tas.client import (
    ApiError,
    Client,
    ConnectionFailed,
    Job,
    JobCancelled,
    JobFailed,
    LogLine,
    Search,
    SearchEnded,
    Trial,
    WaitTimeout,
)

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 2
EXIT_USAGE = 3
#: Ctrl-C while following: the shell's convention for "stopped by SIGINT"; the job runs on.
EXIT_DETACHED = 130

#: Exit code by a finished job's status.
STATUS_EXIT = {"succeeded": EXIT_SUCCEEDED, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}

#: The dashboard's page of a job, under the API's URL.
JOB_PAGE = "/ui/jobs/{id}"
#: The dashboard's page of a search.
SEARCH_PAGE = "/ui/searches/{id}"

#: How often the follower reads new log lines (it also reads them at each change of the job).
LOG_POLL_S = 1.0
#: How often a followed search is read again (it has no event stream; its trials' epochs take
#: seconds at the least, so a faster poll would show nothing new).
SEARCH_POLL_S = 2.0

P = ParamSpec("P")
R = TypeVar("R")

#: On a pipe, rich would lay tables out for 80 columns and cut ids short: a script reading them
#: wants whole lines (a terminal keeps its own width).
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


#: click's UsageError (the base of typer's BadParameter) from whichever click typer runs on: recent
#: typers carry their own copy of click, older ones use the click package.
UsageError: Any = typer.BadParameter.__mro__[1]


class ClientGroup(TyperGroup):
    """A verb group whose usage errors exit with 3, not click's 2: 2 means "cancelled" here."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except UsageError as exc:
            exc.exit_code = EXIT_USAGE
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            exc.exit_code = EXIT_USAGE
            raise


def _group(help: str) -> typer.Typer:
    app = typer.Typer(help=help, no_args_is_help=True, cls=ClientGroup)
    app.callback()(_connect)
    return app


@dataclass
class Conn:
    url: str | None
    api_key: str | None
    _client: Client | None = field(default=None, repr=False)

    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.url, self.api_key)
        return self._client


def _connect(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", envvar="TAS_URL", help="The API (default TAS_URL, else http://127.0.0.1:8000)."
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="TAS_API_KEY",
            help="An API key (default TAS_API_KEY); a loopback server without keys needs none.",
            show_default=False,
        ),
    ] = None,
) -> None:
    ctx.obj = Conn(url, api_key)


def _client(ctx: typer.Context) -> Client:
    conn = ctx.find_object(Conn)
    return conn.client() if conn is not None else Client()


def _exit(code: int, message: str | None = None) -> NoReturn:
    if message:
        err.print(message, markup=False)
    raise typer.Exit(code)


def handles_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """A verb's failures as one line on standard error and the documented exit code, never a
    traceback: the API's own message for a refused request, the URL for an unreachable server."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            _exit(EXIT_USAGE, f"error: {exc.status} {exc.message}")
        except ConnectionFailed as exc:
            _exit(EXIT_USAGE, f"error: {exc}")
        except JobFailed as exc:
            _final(exc.job)
            _exit(EXIT_FAILED)
        except JobCancelled as exc:
            _final(exc.job)
            _exit(EXIT_CANCELLED)
        except WaitTimeout as exc:
            _exit(EXIT_USAGE, f"error: {exc}")

    return wrapper


class Format(StrEnum):
    table = "table"
    json = "json"


Output = Annotated[
    Format, typer.Option("--output", "-o", help="table, or json (the API's objects).")
]


def _print_json(data: Any) -> None:
    # Plain print: rich would wrap long lines, and a pipe wants the bytes as they are.
    print(json.dumps(data, indent=2, default=str))


def _tty() -> bool:
    return sys.stdout.isatty()


# --- jobs -----------------------------------------------------------------------------------------

jobs_cli = _group("Jobs: submit one and follow it live, list, inspect, tail logs, wait, cancel.")


def _load_spec(path: Path, what: str = "job spec") -> dict[str, Any]:
    """A spec (or a search: `what`) from JSON or YAML (by the file's suffix; `-` is standard
    input, either)."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        _exit(EXIT_USAGE, f"error: cannot read {path}: {exc.strerror}")
    try:
        if path.suffix.lower() in (".yaml", ".yml") or str(path) == "-":
            import yaml

            spec = yaml.safe_load(text)  # YAML is a superset of JSON: stdin may be either
        else:
            spec = json.loads(text)
    except Exception as exc:  # yaml's and json's errors share no base class
        _exit(EXIT_USAGE, f"error: {path} is not a valid {what} file: {exc}")
    if not isinstance(spec, dict):
        _exit(EXIT_USAGE, f"error: {path} holds a {type(spec).__name__}, not a {what} (a mapping)")
    return spec


@jobs_cli.command("submit")
@handles_errors
def jobs_submit(
    ctx: typer.Context,
    spec_file: Annotated[
        Path, typer.Argument(metavar="SPEC", help="The job spec, .json or .yaml (- for stdin).")
    ],
    follow: Annotated[
        bool,
        typer.Option(
            "--follow/--detach",
            help="Follow the job to its end (default), or print its id and return at once.",
        ),
    ] = True,
) -> None:
    """Submit a job. Following, the exit code is the job's: 0 succeeded, 1 failed, 2 cancelled;
    Ctrl-C detaches (the job keeps running: `tas jobs wait ID`, `tas jobs logs ID -f`)."""
    spec = _load_spec(spec_file)
    client = _client(ctx)
    job = client.jobs.submit(spec)
    for warning in job.warnings:
        err.print(f"warning: {warning}", markup=False)
    if not follow:
        print(job.id)
        return
    raise typer.Exit(_follow(client, job))


@jobs_cli.command("list")
@handles_errors
def jobs_list(
    ctx: typer.Context,
    status: Annotated[
        list[str] | None,
        typer.Option(help="queued, running, succeeded, failed, cancelled (repeatable)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Jobs whose name starts with this.")] = None,
    sort: Annotated[
        str | None,
        typer.Option(
            help="created_at, name, status or duration; a leading - reverses it"
            " (default: -created_at, newest first)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many (in the sort order).")] = 20,
    output: Output = Format.table,
) -> None:
    """Your jobs, newest first unless --sort says otherwise."""
    jobs = list(_client(ctx).jobs.list(status=status or None, name=name, sort=sort, limit=limit))
    if output is Format.json:
        _print_json([j.raw for j in jobs])
        return
    table = Table(
        "id", "name", "status", "stage", "progress", "best", "created", "duration", box=box.SIMPLE
    )
    for j in jobs:
        best = (j.best_metrics or {}).get(j.monitor)
        table.add_row(
            j.id,
            j.name,
            j.status,
            j.stage or "",
            f"{j.progress.fraction:.0%}" if j.progress else "",
            f"{j.monitor}={_num(best)}" if best is not None else "",
            f"{j.created_at:%Y-%m-%d %H:%M:%S}" if j.created_at else "",
            _duration(j),
        )
    out.print(table)


@jobs_cli.command("get")
@handles_errors
def jobs_get(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    output: Output = Format.table,
) -> None:
    """A job: status, progress, metrics, error, registered model."""
    job = _client(ctx).jobs.get(job_id)
    if output is Format.json:
        _print_json(job.raw)
        return
    table = Table("field", "value", box=box.SIMPLE, show_header=False)
    for key, value in _summary(job):
        table.add_row(key, value)
    out.print(table)
    _final_metrics(job)


def _summary(job: Job) -> list[tuple[str, str]]:
    rows = [("id", job.id), ("name", job.name), ("status", job.status)]
    rows += [("stage", job.stage or ""), ("queue", job.queue)]
    if job.progress:
        rows.append(("progress", _progress_text(job)))
    rows.append(("attempts", f"{job.attempts}/{job.max_attempts}"))
    if job.created_at:
        rows.append(("created", f"{job.created_at:%Y-%m-%d %H:%M:%S}"))
    if job.started_at:
        rows.append(("duration", _duration(job)))
    if job.error:
        rows.append(("error", f"{job.error.type}: {job.error.message}"))
        if job.error.hint:
            rows.append(("hint", job.error.hint))
    if job.model:
        rows.append(("model", f"{job.model[0]} v{job.model[1]}"))
    if job.search_id:
        rows.append(("search", f"{job.search_id} (trial {job.trial_number})"))
    return rows


@jobs_cli.command("logs")
@handles_errors
def jobs_logs(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job finishes.")
    ] = False,
) -> None:
    """The job's log: stages, warnings, the training's lines, tracebacks. With -f the exit code
    is the job's (0 succeeded, 1 failed, 2 cancelled)."""
    client = _client(ctx)
    try:
        for line in client.jobs.iter_logs(job_id, follow=follow, poll_s=LOG_POLL_S):
            print(_log_text(line), flush=True)
    except KeyboardInterrupt:
        _detached(job_id)
    if follow:
        raise typer.Exit(STATUS_EXIT.get(client.jobs.get(job_id).status, EXIT_SUCCEEDED))


@jobs_cli.command("wait")
@handles_errors
def jobs_wait(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    timeout: Annotated[
        float | None, typer.Option(help="Give up after this many seconds (exit 3).")
    ] = None,
) -> None:
    """Wait for the job to finish; the exit code is its: 0 succeeded, 1 failed, 2 cancelled."""
    client = _client(ctx)
    job = client.jobs.get(job_id)
    try:
        job.wait(timeout=timeout)
    except KeyboardInterrupt:
        _detached(job_id)
    raise typer.Exit(_final(job))


@jobs_cli.command("cancel")
@handles_errors
def jobs_cancel(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Cancel: a queued job at once, a running one at its next step (exit 3 if it has finished)."""
    job = _client(ctx).jobs.cancel(job_id)
    print(f"cancel requested: job {job.id} is {job.status}")


# --- following a job ------------------------------------------------------------------------------


class LogTail:
    """The job's new log lines, read from GET /jobs/{id}/logs at most every LOG_POLL_S (and once
    more at the end), or taken from the event stream when the server sends them there; each line
    once, by its id."""

    def __init__(self, client: Client, job_id: str) -> None:
        self.client = client
        self.job_id = job_id
        self.after: int | None = None
        # Not at once: a server that streams the log sends it right after the job's first event.
        self.last_read = time.monotonic()
        self.enabled = True
        #: The server sends the log on the event stream: read the endpoint only once, at the end,
        #: for a line written after the job's last event.
        self.streamed = False

    def seen(self, line: LogLine) -> bool:
        if line.id is None:
            return False
        if self.after is not None and line.id <= self.after:
            return True
        self.after = line.id
        return False

    def poll(self, *, force: bool = False) -> list[LogLine]:
        now = time.monotonic()
        if not self.enabled or (not force and (self.streamed or now - self.last_read < LOG_POLL_S)):
            return []
        self.last_read = now
        lines: list[LogLine] = []
        try:
            while True:
                page = self.client.jobs.logs(self.job_id, after=self.after)
                fresh = [line for line in page.items if not self.seen(line)]
                lines += fresh
                if not fresh:
                    return lines
        except ApiError as exc:
            if exc.status in (404, 405) and not lines:
                self.enabled = False  # a server without job logs: follow the job alone
            return lines
        except ConnectionFailed:
            return lines  # the event stream rides out the outage; the lines come next time


def _log_text(line: LogLine) -> str:
    when = f"{line.time:%H:%M:%S} " if line.time else ""
    level = f"{line.level.upper()} " if line.level and line.level != "info" else ""
    return f"{when}{level}{line.message}"


def _follow(client: Client, job: Job) -> int:
    """Print the job's id and page, then follow it to its end; the job's exit code."""
    print(f"job {job.id} {job.status}: {client.url}{JOB_PAGE.format(id=job.id)}", flush=True)
    tail = LogTail(client, job.id)
    try:
        if _tty():
            _follow_live(job, tail)
        else:
            _follow_plain(job, tail)
    except KeyboardInterrupt:
        _detached(job.id)
    return _final(job)


def _detached(job_id: str) -> NoReturn:
    _exit(
        EXIT_DETACHED,
        f"\ndetached: job {job_id} keeps running (only `tas jobs cancel {job_id}` stops it)."
        f" Re-attach with `tas jobs wait {job_id}` or `tas jobs logs {job_id} -f`.",
    )


def _updates(job: Job, tail: LogTail) -> Iterator[list[LogLine]]:
    """For each event of the job: the log lines to print before showing its new state."""
    for event in job.events():
        if event.event == "log":
            try:
                data = event.json()
            except ValueError:
                continue
            items = [i for i in (data if isinstance(data, list) else [data]) if isinstance(i, dict)]
            tail.streamed = True
            yield [ln for ln in map(LogLine.of, items) if not tail.seen(ln)]
        elif event.event == "job":
            yield tail.poll(force=job.finished)
    yield tail.poll(force=True)


def _follow_live(job: Job, tail: LogTail) -> None:
    """A rich progress bar with the log scrolling above it."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[where]}"),
        TextColumn("ETA {task.fields[eta]}"),
        TextColumn("{task.fields[metrics]}"),
    )
    with Progress(*columns, console=out, transient=False) as bar:
        task = bar.add_task(job.status, total=1.0, where="", eta="-", metrics="")
        _show(bar, task, job)
        for lines in _updates(job, tail):
            for line in lines:
                bar.console.print(_log_text(line), markup=False, highlight=False)
            _show(bar, task, job)


def _show(bar: Progress, task: TaskID, job: Job) -> None:
    p = job.progress
    bar.update(
        task,
        completed=1.0 if job.status == "succeeded" else (p.fraction if p else 0.0),
        description=f"{job.status} {job.stage or ''}".strip(),
        where=f"epoch {p.epoch}/{p.epochs} step {p.step}/{p.steps_per_epoch}" if p else "",
        eta=_eta(job),
        metrics=_metrics_text(job),
    )


def _follow_plain(job: Job, tail: LogTail) -> None:
    """One line per change of status, stage or epoch (a pipe or a CI log wants no redraws)."""
    shown: tuple[str, str | None, int | None] | None = None
    for lines in _updates(job, tail):
        for line in lines:
            print(_log_text(line), flush=True)
        state = (job.status, job.stage, job.progress.epoch if job.progress else None)
        if state != shown:
            shown = state
            where = f" {_progress_text(job)}" if job.progress else ""
            metrics = f" {_metrics_text(job)}" if job.latest_metrics else ""
            stage = f" {job.stage}" if job.stage else ""
            print(f"{job.status}{stage}{where}{metrics}", flush=True)


def _progress_text(job: Job) -> str:
    p = job.progress
    if p is None:
        return ""
    return (
        f"epoch {p.epoch}/{p.epochs} step {p.step}/{p.steps_per_epoch} ({p.fraction:.0%},"
        f" ETA {_eta(job)})"
    )


def _eta(job: Job) -> str:
    s = job.progress.eta_seconds if job.progress else None
    if s is None or job.finished:
        return "-"
    s = int(s)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


def _metrics_text(job: Job) -> str:
    """The latest loss and the monitored metric (with its best so far)."""
    latest, best = job.latest_metrics or {}, job.best_metrics or {}
    parts = []
    loss = latest.get("loss", latest.get("train_loss"))
    if loss is not None:
        parts.append(f"loss={_num(loss)}")
    if job.monitor in latest and job.monitor not in ("loss", "train_loss"):
        parts.append(f"{job.monitor}={_num(latest[job.monitor])}")
    if job.monitor in best:
        parts.append(f"(best {_num(best[job.monitor])})")
    return " ".join(parts)


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _duration(job: Job) -> str:
    if job.started_at is None:
        return ""
    end = job.finished_at or job.updated_at
    if end is None:
        return ""
    s = int((end - job.started_at).total_seconds())
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _final(job: Job) -> int:
    """The job's end: its final metrics and model, its error, or that it was cancelled; and the
    exit code its status maps to."""
    if job.status == "succeeded":
        print(f"job {job.id} succeeded in {_duration(job) or '0s'}", flush=True)
        _final_metrics(job)
    elif job.status == "failed":
        e = job.error
        where = f" in stage {e.stage}" if e and e.stage else ""
        err.print(f"job {job.id} failed{where}", markup=False)
        if e:
            err.print(f"{e.type}: {e.message}", markup=False)
            if e.hint:
                err.print(f"hint: {e.hint}", markup=False)
    elif job.status == "cancelled":
        err.print(f"job {job.id} cancelled", markup=False)
    else:
        print(f"job {job.id} is {job.status}")
    return STATUS_EXIT.get(job.status, EXIT_USAGE)


def _final_metrics(job: Job) -> None:
    """The final metrics beside the best (what the checkpoint kept), and the registered model."""
    latest, best = job.latest_metrics or {}, job.best_metrics or {}
    keys = [k for k in dict.fromkeys([*latest, *best]) if k not in ("epoch", "step")]
    if keys:
        table = Table("metric", "final", "best", box=box.SIMPLE, title=None)
        for k in keys:
            table.add_row(
                k + (" (monitored)" if k == job.monitor else ""),
                _num(latest[k]) if k in latest else "",
                _num(best[k]) if k in best else "",
            )
        out.print(table)
    if job.model:
        name, version = job.model
        print(f"registered model: {name} v{version}  (tas models predict {name}:{version} ...)")


# --- datasets ---------------------------------------------------------------------------------------

datasets_cli = _group("Datasets: upload a CSV, NPZ or ZIP of images; list the built-ins and yours.")


@datasets_cli.command("upload")
@handles_errors
def datasets_upload(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A CSV, NPZ (X, y) or ZIP.")],
    name: Annotated[str | None, typer.Option(help="Default: the file's name stem.")] = None,
    target: Annotated[str | None, typer.Option(help="The label column (CSV).")] = None,
    format: Annotated[
        str | None, typer.Option("--format", help="Default: from the name and contents.")
    ] = None,
    task: Annotated[str | None, typer.Option(help="classification or regression.")] = None,
    size: Annotated[str | None, typer.Option(help="Images: resize to S or HxW.")] = None,
    output: Output = Format.table,
) -> None:
    """Upload a dataset; prints its id (use it as the spec's dataset.id) and inferred schema."""
    if not file.is_file():
        _exit(EXIT_USAGE, f"error: no such file: {file}")
    ds = _client(ctx).datasets.upload(
        file, name=name, target=target, format=format, task=task, size=size
    )
    if output is Format.json:
        _print_json(ds.raw)
        return
    s = ds.schema
    table = Table("field", "value", box=box.SIMPLE, show_header=False)
    for key, value in (
        ("id", ds.id),
        ("name", ds.name),
        ("format", ds.format),
        ("task", s.get("task")),
        ("samples", s.get("samples")),
        ("input shape", s.get("input_shape")),
        ("classes", s.get("num_classes")),
    ):
        if value is not None:
            table.add_row(key, str(value))
    out.print(table)


@datasets_cli.command("list")
@handles_errors
def datasets_list(ctx: typer.Context, output: Output = Format.table) -> None:
    """The built-ins, then your uploads (newest first)."""
    items = list(_client(ctx).datasets.list())
    if output is Format.json:
        _print_json([d.raw for d in items])
        return
    table = Table("id", "name", "format", "task", "samples", "classes", box=box.SIMPLE)
    for d in items:
        s = d.schema
        table.add_row(
            d.id,
            d.name,
            d.format,
            str(s.get("task", "")),
            _opt(s.get("samples")),
            _opt(s.get("num_classes")),
        )
    out.print(table)


def _opt(v: Any) -> str:
    return "" if v is None else str(v)


# --- models -----------------------------------------------------------------------------------------


class WeightsFormat(StrEnum):
    safetensors = "safetensors"
    onnx = "onnx"


models_cli = _group("Models: the registry's versions and aliases; predict; download.")


@models_cli.command("list")
@handles_errors
def models_list(ctx: typer.Context, output: Output = Format.table) -> None:
    """Your models, with their latest version and aliases."""
    models = list(_client(ctx).models.list())
    if output is Format.json:
        _print_json([m.raw for m in models])
        return
    table = Table("name", "latest", "versions", "aliases", box=box.SIMPLE)
    for m in models:
        aliases = ", ".join(f"{a}→v{v}" for a, v in sorted(m.aliases.items()))
        table.add_row(m.name, f"v{m.latest_version}", str(len(m.versions)), aliases)
    out.print(table)


@models_cli.command("get")
@handles_errors
def models_get(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME")],
    output: Output = Format.table,
) -> None:
    """A model's versions (newest first) with their job, metrics and aliases."""
    model = _client(ctx).models.get(name)
    if output is Format.json:
        _print_json(model.raw)
        return
    table = Table("version", "job", "created", "aliases", "metrics", box=box.SIMPLE)
    for v in model.versions:
        metrics = ", ".join(f"{k}={_num(x)}" for k, x in list((v.metrics or {}).items())[:4])
        table.add_row(
            f"v{v.version}",
            v.job_id,
            f"{v.created_at:%Y-%m-%d %H:%M}" if v.created_at else "",
            ", ".join(v.aliases),
            metrics,
        )
    out.print(table)


@models_cli.command("alias")
@handles_errors
def models_alias(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME")],
    alias: Annotated[str, typer.Argument(metavar="ALIAS", help="e.g. production")],
    version: Annotated[int, typer.Argument(metavar="VERSION", min=1)],
) -> None:
    """Point NAME@ALIAS at VERSION (the next /predict for it uses that version)."""
    a = _client(ctx).models.set_alias(name, alias, version)
    print(f"{a.name}@{a.alias} -> v{a.version}")


@models_cli.command("predict")
@handles_errors
def models_predict(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Argument(metavar="MODEL", help="A job id, name, name:version or name@alias.")
    ],
    inputs: Annotated[
        str,
        typer.Argument(
            metavar="INPUTS",
            help='A JSON list of samples (e.g. "[[5.1, 3.5, 1.4, 0.2]]"), @FILE.json, or - (stdin).',
        ),
    ],
    top_k: Annotated[int | None, typer.Option(min=1, help="Also the k likeliest classes.")] = None,
    output: Output = Format.table,
) -> None:
    """Predict a batch of samples with a registered model."""
    text = sys.stdin.read() if inputs == "-" else inputs
    if inputs.startswith("@"):
        try:
            text = Path(inputs[1:]).read_text()
        except OSError as exc:
            _exit(EXIT_USAGE, f"error: cannot read {inputs[1:]}: {exc.strerror}")
    try:
        samples = json.loads(text)
    except ValueError as exc:
        _exit(EXIT_USAGE, f"error: INPUTS is not JSON: {exc}")
    if not isinstance(samples, list):
        _exit(EXIT_USAGE, "error: INPUTS must be a JSON list of samples")
    result = _client(ctx).models.predict(model, samples, top_k=top_k)
    if output is Format.json:
        _print_json(result.raw)
        return
    print(f"model {result.model} v{result.version} (job {result.job_id})")
    table = Table("#", "prediction", "probability", box=box.SIMPLE)
    for i, p in enumerate(result.predictions):
        if p.value is not None:
            table.add_row(str(i), _num(p.value), "")
        else:
            prob = p.probabilities[p.label] if p.probabilities and p.label is not None else None
            label = p.class_name if p.class_name is not None else _opt(p.label)
            table.add_row(str(i), label, _num(prob) if prob is not None else "")
    out.print(table)


@models_cli.command("download")
@handles_errors
def models_download(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="name, name:version or name@alias.")],
    version: Annotated[int | None, typer.Option(min=1, help="Default: the latest.")] = None,
    format: Annotated[
        WeightsFormat, typer.Option("--format", help="safetensors or onnx.")
    ] = WeightsFormat.safetensors,
    path: Annotated[
        Path | None,
        typer.Option("--out", help="A file, or a directory (default: here, the server's name)."),
    ] = None,
) -> None:
    """Save a version's weights (safetensors, the model card embedded) or its ONNX export."""
    saved = _client(ctx).models.download(name, version, format=format.value, path=path)
    print(saved)


# --- searches ---------------------------------------------------------------------------------------

searches_cli = _group(
    "Searches: hyperparameter searches whose trials are jobs; create, follow, list, cancel."
)


@searches_cli.command("create")
@handles_errors
def searches_create(
    ctx: typer.Context,
    search_file: Annotated[
        Path,
        typer.Argument(
            metavar="SEARCH",
            help="The search (name, spec, space, objective, sampler, pruner, max_trials,"
            " max_concurrent, model_name), .json or .yaml (- for stdin).",
        ),
    ],
    follow: Annotated[
        bool,
        typer.Option(
            "--follow/--detach",
            help="Follow the search's trials to its end, or print its id and return (default).",
        ),
    ] = False,
) -> None:
    """Start a search. Following, the exit code is the search's: 0 succeeded, 1 failed,
    2 cancelled; Ctrl-C detaches (the search keeps running: `tas searches get ID --follow`)."""
    body = _load_spec(search_file, "search")
    client = _client(ctx)
    search = client.searches.create(body)
    if not follow:
        print(search.id)
        return
    raise typer.Exit(_follow_search(client, search))


@searches_cli.command("get")
@handles_errors
def searches_get(
    ctx: typer.Context,
    search_id: Annotated[str, typer.Argument(metavar="ID")],
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Keep the trials table live until the search finishes; the exit code is then"
            " the search's (0 succeeded, 1 failed, 2 cancelled).",
        ),
    ] = False,
    output: Output = Format.table,
) -> None:
    """A search: status, objective, best trial, registered model, and its trials."""
    client = _client(ctx)
    search = client.searches.get(search_id)
    if output is Format.json:
        if follow:
            try:
                search.wait(poll_s=SEARCH_POLL_S)
            except KeyboardInterrupt:
                _detached_search(search.id)
            except SearchEnded:
                pass  # the search ended otherwise: its object says how, the exit code too
        _print_json(search.raw)
        if follow:
            raise typer.Exit(STATUS_EXIT.get(search.status, EXIT_USAGE))
        return
    if follow:
        raise typer.Exit(_follow_search(client, search))
    out.print(_search_view(search))


@searches_cli.command("list")
@handles_errors
def searches_list(
    ctx: typer.Context,
    status: Annotated[
        list[str] | None,
        typer.Option(help="queued, running, succeeded, failed, cancelled (repeatable)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many (newest first).")] = 20,
    output: Output = Format.table,
) -> None:
    """Your searches, newest first."""
    searches = list(_client(ctx).searches.list(status=status or None, limit=limit))
    if output is Format.json:
        _print_json([s.raw for s in searches])
        return
    table = Table("id", "name", "status", "objective", "trials", "best", "created", box=box.SIMPLE)
    for s in searches:
        best = s.best.value if s.best else None
        table.add_row(
            s.id,
            s.name,
            s.status,
            _objective_text(s),
            _trials_done_text(s),
            f"{s.metric}={_num(best)}" if best is not None else "",
            f"{s.created_at:%Y-%m-%d %H:%M:%S}" if s.created_at else "",
        )
    out.print(table)


@searches_cli.command("cancel")
@handles_errors
def searches_cancel(
    ctx: typer.Context, search_id: Annotated[str, typer.Argument(metavar="ID")]
) -> None:
    """Cancel a search: no new trials, its running trials cancelled (exit 3 if it has finished)."""
    search = _client(ctx).searches.cancel(search_id)
    print(f"cancel requested: search {search.id} is {search.status}")


def _objective_text(s: Search) -> str:
    return f"{s.direction} {s.metric}".strip()


def _trials_done_text(s: Search) -> str:
    """How far it is: the finished trials (complete, pruned, failed) out of max_trials."""
    c = s.counts
    done = c.get("complete", 0) + c.get("pruned", 0) + c.get("failed", 0)
    running = c.get("running", 0)
    return f"{done}/{s.max_trials}" + (f" (+{running} running)" if running else "")


def _counts_text(s: Search) -> str:
    c = s.counts
    return ", ".join(f"{c.get(k, 0)} {k}" for k in ("running", "complete", "pruned", "failed"))


def _param_text(value: Any) -> str:
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _params_text(trial: Trial) -> str:
    return " ".join(f"{k}={_param_text(v)}" for k, v in trial.params.items())


def _search_facts(s: Search) -> Table:
    sampler = s.sampler.get("type", "")
    if s.sampler.get("seed") is not None:
        sampler += f" (seed {s.sampler['seed']})"
    rows = [
        ("id", s.id),
        ("name", s.name),
        ("status", s.status),
        ("objective", _objective_text(s)),
        ("sampler", sampler),
        ("pruner", str(s.pruner.get("type", ""))),
        ("trials", f"{_trials_done_text(s)}: {_counts_text(s)}"),
        ("concurrent", str(s.max_concurrent)),
    ]
    if s.created_at:
        rows.append(("created", f"{s.created_at:%Y-%m-%d %H:%M:%S}"))
    if s.finished_at:
        rows.append(("finished", f"{s.finished_at:%Y-%m-%d %H:%M:%S}"))
    if s.waiting_for and not s.finished:
        rows.append(("waiting for", s.waiting_for))
    if s.error:
        rows.append(("error", _error_text(s.error)))
    if s.best:
        rows.append(("best", _best_text(s, s.best)))
    if s.model:
        rows.append(("model", f"{s.model[0]} v{s.model[1]}"))
    elif s.model_name:
        rows.append(("model", f"{s.model_name} (registered once the search succeeds)"))
    table = Table("field", "value", box=box.SIMPLE, show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    return table


def _error_text(error: dict[str, Any]) -> str:
    return f"{error.get('type', 'Error')}: {error.get('message', '')}"


def _best_text(s: Search, best: Trial) -> str:
    return f"trial {best.number}: {s.metric}={_num(best.value)} (job {best.job_id}) {_params_text(best)}"


def _trials_table(s: Search) -> Table:
    """A row per trial (newest last), a column per searched path; the best trial marked."""
    paths = list(dict.fromkeys([*s.space, *(k for t in s.trials for k in t.params)]))
    best = s.best.number if s.best else None
    table = Table("#", "state", *paths, s.metric or "value", "epochs", "job", box=box.SIMPLE)
    for t in sorted(s.trials, key=lambda t: t.number):
        value = t.last_value
        shown = "" if value is None else _num(value) + ("" if t.value is not None else " (last)")
        table.add_row(
            str(t.number) + (" *" if t.number == best else ""),
            t.state,
            *(_param_text(t.params[p]) if p in t.params else "" for p in paths),
            shown,
            str(t.epochs),
            t.job_id or "",
        )
    return table


def _importances_table(s: Search) -> Table | None:
    if not s.importances:
        return None
    table = Table("parameter", "importance", box=box.SIMPLE)
    for path, value in sorted(s.importances.items(), key=lambda kv: -kv[1]):
        table.add_row(path, f"{value:.3f}")
    return table


def _search_view(s: Search) -> Group:
    parts: list[Any] = [_search_facts(s)]
    if s.trials:
        parts.append(_trials_table(s))
    importances = _importances_table(s)
    if importances is not None:
        parts.append(importances)
    return Group(*parts)


def _follow_search(client: Client, search: Search) -> int:
    """Print the search's id and page, then follow its trials to its end; its exit code."""
    url = f"{client.url}{SEARCH_PAGE.format(id=search.id)}"
    print(f"search {search.id} {search.status}: {url}", flush=True)
    try:
        if _tty():
            with Live(_search_view(search), console=out, auto_refresh=False) as live:
                for s in search.watch(poll_s=SEARCH_POLL_S):
                    live.update(_search_view(s), refresh=True)
        else:
            _follow_search_plain(search)
    except KeyboardInterrupt:
        _detached_search(search.id)
    return _search_final(search)


def _follow_search_plain(search: Search) -> None:
    """A line per trial that starts or changes state, and per change of the search's status."""
    shown: dict[int, str] = {}
    status: str | None = None
    for s in search.watch(poll_s=SEARCH_POLL_S):
        for t in sorted(s.trials, key=lambda t: t.number):
            if shown.get(t.number) == t.state:
                continue
            shown[t.number] = t.state
            print(_trial_line(s, t), flush=True)
        if s.status != status:
            status = s.status
            print(f"search {s.status}: {_counts_text(s)}", flush=True)


def _trial_line(s: Search, t: Trial) -> str:
    if t.state == "running":
        return f"trial {t.number} running (job {t.job_id}) {_params_text(t)}".rstrip()
    value = t.last_value
    result = f" {s.metric}={_num(value)}" if value is not None else ""
    epochs = f" after {t.epochs} epoch{'s' if t.epochs != 1 else ''}"
    return f"trial {t.number} {t.state}{result}{epochs}"


def _detached_search(search_id: str) -> NoReturn:
    _exit(
        EXIT_DETACHED,
        f"\ndetached: search {search_id} keeps running (only `tas searches cancel {search_id}`"
        f" stops it). Re-attach with `tas searches get {search_id} --follow`.",
    )


def _search_final(s: Search) -> int:
    """The search's end: its best trial and model, or how it ended; the exit code."""
    summary = f"{len(s.trials) or sum(s.counts.values())} trials ({_counts_text(s)})"
    if s.status == "succeeded":
        print(f"search {s.id} succeeded: {summary}", flush=True)
        if s.best:
            print(f"best: {_best_text(s, s.best)}", flush=True)
        if s.model:
            name, version = s.model
            print(f"registered model: {name} v{version}  (tas models predict {name}:{version} ...)")
    elif s.status in ("failed", "cancelled"):
        err.print(f"search {s.id} {s.status}: {summary}", markup=False)
        if s.error:
            err.print(_error_text(s.error), markup=False)
        if s.best:
            err.print(f"best so far: {_best_text(s, s.best)}", markup=False)
    else:
        print(f"search {s.id} is {s.status}")
    return STATUS_EXIT.get(s.status, EXIT_USAGE)


def register(cli: typer.Typer) -> None:
    """Add the verb groups to the `tas` command."""
    cli.add_typer(jobs_cli, name="jobs")
    cli.add_typer(datasets_cli, name="datasets")
    cli.add_typer(models_cli, name="models")
    cli.add_typer(searches_cli, name="searches")

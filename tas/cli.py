"""`tas`: run the service (`serve`), a worker (`worker`), or migrate the database (`migrate`)."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

from tas import client_cli
from tas.errors import DomainError
from tas.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

cli = typer.Typer(help="tas — training as a service.", no_args_is_help=True, add_completion=False)
console = Console(stderr=True)
log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _settings() -> Settings:
    settings = Settings()
    settings.ensure_dirs()
    return settings


@cli.command()
def migrate() -> None:
    """Upgrade the database to the latest schema (Alembic)."""
    from tas.store.migrate import upgrade

    settings = _settings()
    upgrade(settings.resolved_database_url)
    console.print(f"[green]database at head[/green]: {_redact(settings.resolved_database_url)}")


@cli.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default TAS_HOST, 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default TAS_PORT, 8000).")] = None,
    worker: Annotated[
        bool, typer.Option("--worker/--no-worker", help="Also run an embedded worker.")
    ] = True,
    concurrency: Annotated[int, typer.Option(help="Embedded worker's concurrent jobs.")] = 1,
    loglevel: Annotated[
        str, typer.Option(help="tas's own log level; libraries log warnings and above.")
    ] = "info",
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Serve beyond loopback with no API key: anyone who reaches the port can do"
            " anything. Without it, such a server refuses to start until `tas keys create`.",
        ),
    ] = False,
    ssl_certfile: Annotated[
        str | None, typer.Option(help="Serve HTTPS with this certificate (PEM, chain included).")
    ] = None,
    ssl_keyfile: Annotated[
        str | None, typer.Option(help="The certificate's private key (PEM).")
    ] = None,
) -> None:
    """The API and (unless --no-worker) an embedded Celery worker: one command, no other server.

    Ctrl-C or SIGTERM stops both: a running job checkpoints and goes back to the queue, and
    `tas serve` returns only when its worker and the worker's children are gone."""
    import uvicorn

    from app.main import create_app
    from tas.embedded import EmbeddedWorker
    from tas.store.migrate import upgrade

    _quiet_logging(loglevel)
    settings = _settings()
    host = host or settings.host
    port = port or settings.port
    upgrade(settings.resolved_database_url)
    if host not in LOOPBACK and not _keys_exist(settings):
        if not insecure:
            console.print(
                f"[red]error[/red]: refusing to serve on {host} with no API key: anyone who"
                " reaches the port could read, change or delete everything. Create one first"
                " (tas keys create --tenant NAME --scopes SCOPE,...), bind to 127.0.0.1, or pass"
                " --insecure."
            )
            raise typer.Exit(2)
        console.print(f"[yellow]warning[/yellow]: serving on {host} with no API key (--insecure)")

    def ready(pid: int) -> None:
        console.print(f"worker ready (pid {pid}, concurrency {concurrency})")

    embedded = (
        EmbeddedWorker(
            queues="default,cpu,gpu",
            concurrency=concurrency,
            grace_s=settings.worker_stop_grace_s,
            on_ready=ready,
        )
        if worker
        else None
    )

    if (ssl_certfile is None) != (ssl_keyfile is None):
        console.print("[red]error[/red]: --ssl-certfile and --ssl-keyfile go together")
        raise typer.Exit(2)

    def started() -> None:
        url = f"{'https' if ssl_certfile else 'http'}://{host}:{port}"
        console.print(f"tas serving on [bold]{url}[/bold]  (API docs: {url}/docs)")
        console.print(f"data dir {settings.data_dir.resolve()}")
        console.print(f"database {_redact(settings.resolved_database_url)}")
        if embedded is None:
            console.print("no embedded worker (--no-worker): start `tas worker` beside it")

    server = _server(
        uvicorn.Config(
            create_app(settings),
            host=host,
            port=port,
            log_level="warning",
            access_log=settings.access_log,
            timeout_graceful_shutdown=5,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
        ),
        on_started=started,
        on_exit=embedded.request_stop if embedded is not None else None,
    )
    # uvicorn restores the handlers it found and raises the caught signal again once it has shut
    # down: with the default SIGTERM handler the process would die there, before the `finally`
    # that stops the worker. These handlers only note the signal; the worker is stopped below.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _note_signal)
    try:
        if embedded is not None:
            embedded.start()
        server.run()
    finally:
        if embedded is not None:
            console.print("stopping the worker (a running job checkpoints and is requeued)")
            embedded.stop()
    console.print("stopped")


def _keys_exist(settings: Settings) -> bool:
    from tas.store import keys as key_store
    from tas.store.engine import make_engine, make_sessionmaker
    from tas.store.unit_of_work import unit_of_work

    engine = make_engine(settings.resolved_database_url)
    try:
        with unit_of_work(make_sessionmaker(engine, read_only=True)) as session:
            return key_store.any_key(session)
    finally:
        engine.dispose()


def _server(
    config: Any, *, on_started: Callable[[], None], on_exit: Callable[[], None] | None
) -> Any:
    """uvicorn's Server, told when it starts serving and when a stop signal arrives (so the
    worker's shutdown runs alongside the API's instead of after it)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                on_started()

        def handle_exit(self, sig: int, frame: Any) -> None:
            if on_exit is not None:
                on_exit()
            super().handle_exit(sig, frame)

    return Server(config)


def _note_signal(signum: int, frame: Any) -> None:
    log.debug("signal %d after the server stopped", signum)


def _quiet_logging(loglevel: str) -> None:
    """The user's first minute shows what they need; libraries' chatter goes below warning."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for name in ("tas", "app", "worker"):
        logging.getLogger(name).setLevel(loglevel.upper())


@cli.command()
def worker(
    queues: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated queues: default, cpu, gpu. Default: default,cpu; gpu,default"
            " with --gpus."
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(help="Jobs at once. Default: 1; with --gpus, one per GPU.", min=1),
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            help="The GPUs this worker owns: nvidia-smi indices or UUIDs (0,1), or all. The"
            " worker and its jobs see only these (CUDA_VISIBLE_DEVICES), it consumes the gpu"
            " queue, and each job holds its own GPUs (one per process) while it runs, so no two"
            " jobs, of this worker or of another given the same GPUs, share one."
        ),
    ] = None,
    pool: Annotated[str, typer.Option(help="prefork (a fresh child per job) or solo.")] = "prefork",
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "info",
    hostname: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
    embedded: Annotated[bool, typer.Option(hidden=True)] = False,
    ready_fd: Annotated[int | None, typer.Option(hidden=True)] = None,
    stop_grace: Annotated[float | None, typer.Option(hidden=True)] = None,
) -> None:
    """A Celery worker. Its main process never touches CUDA; each job runs in a fresh child.

    On a GPU machine: `tas worker --gpus all` (or `--gpus 0,1`, or one worker per GPU with
    `--gpus 0`, `--gpus 1`, ...). A job with `resources.device` cuda waits for as many free GPUs
    as it has processes; one that no live worker of its queue could fit is refused at submit."""
    from worker.celery_app import app, settings

    if embedded:
        # Started by `tas serve`, sharing its terminal: tas's own lines, not Celery's banner, its
        # running-as-root warning (a laptop's choice, said once by the user's shell) or kombu's.
        import warnings

        from celery.exceptions import SecurityWarning

        warnings.filterwarnings("ignore", category=SecurityWarning)
        _quiet_logging(loglevel)
    else:
        logging.basicConfig(
            level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    # Before anything detects devices or forks a child: they must see only the owned GPUs.
    queue_list, jobs_at_once = _gpu_worker(gpus, queues, concurrency)
    from worker import lifeline

    lifeline.install(
        ready_fd=ready_fd,
        grace_s=stop_grace if stop_grace is not None else settings.worker_stop_grace_s,
    )
    settings.ensure_dirs()
    argv = [
        *(["--quiet"] if embedded else []),
        "worker",
        "-Q",
        _servable(queue_list),
        "-c",
        str(jobs_at_once),
        "--pool",
        pool,
        "-l",
        "warning" if embedded else loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv += ["-n", hostname]
    app.worker_main(argv)


def _gpu_worker(gpus: str | None, queues: str | None, concurrency: int | None) -> tuple[str, int]:
    """The queues and concurrency a worker runs with. With `--gpus` it owns those GPUs (set in
    CUDA_VISIBLE_DEVICES before anything detects devices or starts a child), consumes `gpu`, and
    runs one job per GPU unless told otherwise; a GPU that is not there is exit status 2."""
    if gpus is None:
        return queues or "default,cpu", concurrency or 1
    from worker.machine import GpuChoiceError, own_gpus

    try:
        owned = own_gpus(gpus)
    except GpuChoiceError as exc:
        console.print(f"[red]error[/red]: --gpus {gpus}: {exc}")
        raise typer.Exit(2) from exc
    logging.getLogger("tas.worker").info(
        "owning GPU(s) %s", ", ".join(f"{g['index']} ({g['name']}, {g['uuid']})" for g in owned)
    )
    wanted = [q.strip() for q in (queues or "gpu,default").split(",") if q.strip()]
    if "gpu" not in wanted:
        wanted.append("gpu")
    return ",".join(wanted), concurrency or len(owned)


def _servable(queues: str) -> str:
    """The requested queues this machine can serve: `gpu` only with a CUDA device, or a CPU-only
    worker would claim GPU jobs just to fail them."""
    from worker.machine import detect_machine, servable_queues

    servable = servable_queues(queues.split(","), detect_machine().devices)
    for q, why in servable.dropped.items():
        logging.getLogger("tas.worker").info("not consuming queue %r: %s", q, why)
    if not servable.queues:
        console.print(f"[red]error[/red]: no queue in {queues!r} that this machine can serve")
        raise typer.Exit(2)
    return ",".join(servable.queues)


keys_cli = typer.Typer(
    help="API keys: who may call the API, as which tenant, with which scopes.",
    no_args_is_help=True,
)
cli.add_typer(keys_cli, name="keys")
# `tas jobs|datasets|models ...`: verbs on a running API, through tas.client only (no database,
# no server code), so they work against a remote tas as well as this machine's.
client_cli.register(cli)


@contextmanager
def _key_session() -> Iterator[tuple[Settings, Session]]:
    """A unit of work on an up-to-date database (the key table may be new)."""
    from tas.store.engine import make_engine, make_sessionmaker
    from tas.store.migrate import upgrade
    from tas.store.unit_of_work import unit_of_work

    settings = _settings()
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            yield settings, session
    finally:
        engine.dispose()


def _fail(exc: DomainError) -> NoReturn:
    console.print(f"[red]error[/red]: {exc.message}")
    raise typer.Exit(2)


@keys_cli.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Whose objects the key sees.")],
    scopes: Annotated[
        str,
        typer.Option(
            help="Comma-separated: jobs:read, jobs:write, datasets:read, datasets:write,"
            " models:read, models:write, predict, metrics:read, admin."
        ),
    ],
    name: Annotated[str | None, typer.Option(help="What the key is for.")] = None,
    expires: Annotated[
        float | None, typer.Option(help="Days until the key stops working.", min=0.0001)
    ] = None,
) -> None:
    """Create a key. The key is printed once, as the last line of standard output: only a
    keyed hash of it is stored."""
    from tas.store import audit as audit_store
    from tas.store import keys as key_store

    try:
        with _key_session() as (settings, session):
            row, token = key_store.create_key(
                session,
                key_store.server_secret(settings),
                tenant=tenant,
                scopes=[s.strip() for s in scopes.split(",") if s.strip()],
                name=name,
                expires_days=expires,
            )
            audit_store.record(
                session,
                tenant=row.tenant,
                key_id=None,
                action="cli keys create",
                route="tas keys create",
                target=f"/keys/{row.id}",
            )
            key_id, held, until = row.id, ", ".join(row.scopes), row.expires_at
    except DomainError as exc:
        _fail(exc)
    console.print(
        f"created key [bold]{key_id}[/bold] for tenant {tenant!r} (scopes: {held};"
        f" expires: {until.isoformat() if until else 'never'}). It is shown once: keep it."
    )
    print(token)


@keys_cli.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
) -> None:
    """Every key with its tenant, scopes and state; never a secret."""
    from rich.table import Table

    from tas.store import keys as key_store

    table = Table("id", "tenant", "name", "scopes", "created", "expires", "last used", "state")
    with _key_session() as (_, session):
        now = datetime.now(UTC)
        for k in key_store.all_keys(session, tenant):
            state = (
                "revoked"
                if k.revoked_at
                else "expired"
                if k.expires_at and k.expires_at <= now
                else "active"
            )
            table.add_row(
                k.id,
                k.tenant,
                k.name or "",
                ",".join(k.scopes),
                f"{k.created_at:%Y-%m-%d %H:%M}",
                f"{k.expires_at:%Y-%m-%d %H:%M}" if k.expires_at else "never",
                f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never",
                state,
            )
    Console(width=200).print(table)


@keys_cli.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (tas keys list).")],
) -> None:
    """Revoke a key: refused from now on (by a running API within TAS_AUTH_CACHE_S)."""
    from tas.store import audit as audit_store
    from tas.store import keys as key_store

    try:
        with _key_session() as (_, session):
            row = key_store.revoke_key(session, key_id)
            audit_store.record(
                session,
                tenant=row.tenant,
                key_id=None,
                action="cli keys revoke",
                route="tas keys revoke",
                target=f"/keys/{row.id}",
            )
    except DomainError as exc:
        _fail(exc)
    console.print(f"revoked key {key_id}")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def main() -> None:
    cli()

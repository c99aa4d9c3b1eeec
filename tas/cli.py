"""`tas`: run the service (`serve`), a worker (`worker`), or migrate the database (`migrate`)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Annotated

import typer
from rich.console import Console

from tas.settings import Settings

cli = typer.Typer(help="tas — training as a service.", no_args_is_help=True, add_completion=False)
console = Console(stderr=True)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _settings() -> Settings:
    settings = Settings()
    settings.ensure_dirs()
    return settings


@cli.command()
def migrate() -> None:
    """Upgrade the database to the latest schema (Alembic)."""
    from tas.db.migrate import upgrade

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
) -> None:
    """The API and (unless --no-worker) an embedded Celery worker: one command, no other server."""
    import uvicorn

    from app.main import create_app
    from tas.db.migrate import upgrade

    settings = _settings()
    host = host or settings.host
    port = port or settings.port
    if host not in LOOPBACK and not settings.api_keys:
        console.print("[yellow]warning[/yellow]: binding beyond loopback with no TAS_API_KEYS set")
    upgrade(settings.resolved_database_url)
    child = None
    if worker:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tas",
                "worker",
                "--concurrency",
                str(concurrency),
                "--queues",
                "default,cpu,gpu",
            ],
            env=os.environ.copy(),
        )
        console.print(f"embedded worker started (pid {child.pid})")
    try:
        logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            log_level="info",
            access_log=settings.access_log,
        )
    finally:
        if child is not None:
            _stop_child(child)


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    """Warm shutdown: the running job checkpoints and goes back to the queue."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()


@cli.command()
def worker(
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues: default, cpu, gpu.")
    ] = "default,cpu",
    concurrency: Annotated[int, typer.Option(help="Jobs at once (one process per GPU).")] = 1,
    pool: Annotated[str, typer.Option(help="prefork (a fresh child per job) or solo.")] = "prefork",
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "info",
    hostname: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
) -> None:
    """A Celery worker. Its main process never touches CUDA; each job runs in a fresh child."""
    logging.basicConfig(
        level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from worker.celery_app import app, settings

    settings.ensure_dirs()
    argv = [
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "--pool",
        pool,
        "-l",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv += ["-n", hostname]
    app.worker_main(argv)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def main() -> None:
    cli()

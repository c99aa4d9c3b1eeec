"""Throwaway Redis and PostgreSQL servers for tests, each on a free loopback port.

Nothing here touches system services: every server gets its own directory and port and is stopped by
the fixture that started it (and, as a last resort, at interpreter exit).

PostgreSQL refuses to run as root, so under root (CI) ``initdb``/``pg_ctl`` run as the ``postgres``
user in a directory under /tmp that it owns.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REQUIRE_ENV = "TAS_REQUIRE_SERVICES"


class ServerError(RuntimeError):
    """A server binary exists but the server did not come up; the message carries its log."""


def services_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0", "false", "no")


def missing(what: str, hint: str) -> None:
    """Skip the test because ``what`` is not installed, or fail when services are required (CI)."""
    if services_required():
        pytest.fail(f"{what} is required ({REQUIRE_ENV}=1) but missing: {hint}", pytrace=False)
    pytest.skip(f"{what} not available: {hint}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no log at {path})"


# --- redis


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def _redis_ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    binary: str
    dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.dir / "redis.log"

    def start(self, timeout: float = 10.0) -> None:
        cmd = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--dbfilename", "dump.rdb",
            "--save", "",
            "--appendonly", "no",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", str(self.log),
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"redis-server exited with {self.proc.returncode}:\n{_tail(self.log)}"
                )
            if _redis_ping(self.port):
                return
            time.sleep(0.05)
        self.kill()
        raise ServerError(f"redis-server did not answer PING in {timeout}s:\n{_tail(self.log)}")

    def stop(self, save: bool = False, timeout: float = 10.0) -> None:
        """Shut down cleanly (``SHUTDOWN SAVE`` writes dump.rdb, which the next start loads)."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(b"SHUTDOWN SAVE\r\n" if save else b"SHUTDOWN NOSAVE\r\n")
                s.recv(64)  # the server closes the connection as it exits
        except OSError:
            self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is saved."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, empty: bool = True) -> None:
        """Stop and start again on the same port; ``empty=False`` keeps the data (via dump.rdb)."""
        self.stop(save=not empty)
        if empty:
            (self.dir / "dump.rdb").unlink(missing_ok=True)
        self.start()


def start_redis(tmpdir: Path | str) -> RedisServer:
    binary = redis_binary()
    if binary is None:
        raise FileNotFoundError(
            "redis-server not found on PATH (Debian: apt-get install redis-server)"
        )
    d = Path(tmpdir) / f"redis-{uuid.uuid4().hex[:8]}"
    d.mkdir(parents=True)
    last: ServerError | None = None
    for _ in range(3):  # a free port can be taken between choosing and binding it
        server = RedisServer(binary=binary, dir=d, port=free_port())
        try:
            server.start()
        except ServerError as e:
            last = e
            continue
        atexit.register(server.kill)
        return server
    assert last is not None
    raise last


# --- postgres


def postgres_bindir() -> Path | None:
    """The newest PostgreSQL server bin dir (Debian keeps them out of PATH)."""
    candidates = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")]
    if candidates:
        return max(candidates, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _as_postgres_cmd(cmd: list[str]) -> list[str]:
    """Run ``cmd`` as the postgres user when we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *cmd]
    return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]


@dataclass
class PostgresServer:
    bindir: Path
    dir: Path
    port: int
    owns_dir: bool = False
    running: bool = False

    @property
    def datadir(self) -> Path:
        return self.dir / "data"

    @property
    def log(self) -> Path:
        return self.dir / "postgres.log"

    def url_for(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def url(self) -> str:
        return self.url_for("tas")

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        cmd = _as_postgres_cmd([str(self.bindir / args[0]), *args[1:]])
        p = subprocess.run(
            cmd, cwd=self.dir, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout
        )
        if p.returncode != 0:
            raise ServerError(
                f"{shlex.join(cmd)} exited with {p.returncode}:\n"
                f"{p.stdout.decode(errors='replace')}{p.stderr.decode(errors='replace')}\n"
                f"{_tail(self.log)}"
            )

    def init(self) -> None:
        self._run(
            "initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.log), "-w", "-t", "60",
                  "-o", opts, "start")  # fmt: skip
        self.running = True

    def stop(self) -> None:
        if self.running:
            with contextlib.suppress(ServerError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")
            self.running = False
        if self.owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _admin(self, statement: str, dbname: str) -> None:
        """Run ``statement`` (``{}`` = the quoted database name) outside a transaction."""
        import psycopg
        from psycopg import sql

        query = sql.SQL(statement).format(sql.Identifier(dbname))
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(query)

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (cheap: a copy of template0) and return its SQLAlchemy URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self._admin("CREATE DATABASE {} TEMPLATE template0", name)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


def start_postgres(tmpdir: Path | str) -> PostgresServer:
    bindir = postgres_bindir()
    if bindir is None:
        raise FileNotFoundError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
            "(Debian: apt-get install postgresql)"
        )
    if os.geteuid() == 0:
        # pytest's tmp dirs are root-only (0700), so the postgres user gets its own dir in /tmp.
        d = Path(tempfile.mkdtemp(prefix="tas-pg-", dir="/tmp"))
        shutil.chown(d, user="postgres", group="postgres")
        owns_dir = True
    else:
        d = Path(tmpdir) / f"postgres-{uuid.uuid4().hex[:8]}"
        d.mkdir(parents=True)
        owns_dir = False
    server = PostgresServer(bindir=bindir, dir=d, port=free_port(), owns_dir=owns_dir)
    try:
        server.init()
        for attempt in range(3):  # a free port can be taken between choosing and binding it
            try:
                server.start()
                break
            except ServerError:
                if attempt == 2:
                    raise
                server.port = free_port()
        atexit.register(server.stop)
        server.create_database("tas")
    except BaseException:
        server.stop()
        raise
    return server


# --- HTTP apps in a subprocess


@contextlib.contextmanager
def http_server(
    cmd: list[str],
    port: int,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    ready_path: str = "/healthz",
    timeout: float = 90.0,
    grace: float = 15.0,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run ``cmd`` (an HTTP server on 127.0.0.1:``port``), wait until ``ready_path`` answers 200,
    yield its base URL and its process, then stop the whole process group (TERM, ``grace``
    seconds, then KILL)."""
    import httpx

    base = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.mkstemp(prefix="tas-http-", suffix=".log")[1])
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ServerError(
                    f"{shlex.join(cmd)} exited with {proc.returncode} before {ready_path} "
                    f"answered:\n{_tail(log_path, 60)}"
                )
            try:
                if httpx.get(base + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{shlex.join(cmd)}: {ready_path} did not answer 200 in {timeout}s:\n"
                    f"{_tail(log_path, 60)}"
                )
            time.sleep(0.2)
        yield base, proc
    finally:
        _stop_group(proc, grace)
        log_path.unlink(missing_ok=True)


@contextlib.contextmanager
def http_process(
    cmd: list[str],
    port: int,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    ready_path: str = "/healthz",
    timeout: float = 90.0,
) -> Iterator[str]:
    """`http_server` for a caller that needs only the base URL."""
    with http_server(cmd, port, env=env, cwd=cwd, ready_path=ready_path, timeout=timeout) as (
        base,
        _,
    ):
        yield base


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):  # children left behind in the group
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

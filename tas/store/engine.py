"""Engine and session factory. SQLite gets WAL and a busy timeout so the API, the embedded worker
and a job's heartbeat thread can write to one file without `database is locked` errors, and its
transactions begin when SQLAlchemy begins them (see `_sqlite_begin`), so that a SAVEPOINT is part
of the transaction around it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, CursorResult, Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

#: Execution option of a session or connection that only reads: on SQLite its transaction begins
#: DEFERRED (a snapshot, no lock) instead of IMMEDIATE. Ignored by PostgreSQL.
READ_ONLY = "tas_read_only"


def make_engine(url: str, *, pooled: bool = True) -> Engine:
    """`pooled=False`: a connection per session, closed with it, and a PostgreSQL connect that
    gives up after 5 s: for a process that forks (no pooled socket is inherited by a child) and
    must not hang on a database that does not answer (a worker's heartbeat)."""
    # A pooled SQLite connection is a file handle that never goes stale: pinging it before each
    # checkout (a query) is for servers across a network.
    ping = not url.startswith("sqlite")
    kwargs: dict[str, Any] = {"pool_pre_ping": ping} if pooled else {"poolclass": NullPool}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    elif url.startswith("postgresql") and not pooled:
        kwargs["connect_args"] = {"connect_timeout": 5}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # SQLAlchemy's pysqlite recipe, first half: the sqlite3 module never emits BEGIN itself. In
    # its legacy mode it begins only before INSERT/UPDATE/DELETE, so a SAVEPOINT that comes first
    # opens a transaction of its own, which its RELEASE commits whatever the caller does next.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    """The recipe's second half: every transaction begins when SQLAlchemy begins one.

    IMMEDIATE (the write lock at once, waiting up to the busy timeout for it) rather than the
    recipe's plain BEGIN: a DEFERRED transaction that has read and then writes after another
    connection committed fails at once with `database is locked` under WAL (its snapshot is stale,
    and the busy timeout does not apply to that), and the API, the worker and the reaper all read
    before they write. A READ_ONLY transaction begins DEFERRED: it never writes, so it takes no
    lock, and readers never wait for each other or for a writer."""
    read_only = bool(conn.get_execution_options().get(READ_ONLY))
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def make_sessionmaker(engine: Engine, *, read_only: bool = False) -> sessionmaker[Session]:
    """`read_only`: sessions that never write (see READ_ONLY)."""
    bind = engine.execution_options(**{READ_ONLY: True}) if read_only else engine
    return sessionmaker(bind, expire_on_commit=False)


def rowcount(result: Any) -> int:
    """Rows an UPDATE/DELETE matched (`Session.execute` is typed as returning a plain Result)."""
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def ping(session: Session) -> None:
    """A round trip to the database (readiness): raises whatever the driver raises when it does
    not answer."""
    session.execute(text("SELECT 1"))

"""Engine and session factory. SQLite gets WAL and a busy timeout so the API, the embedded worker
and a job's heartbeat thread can write to one file without `database is locked` errors."""

from __future__ import annotations

from typing import Any

from sqlalchemy import CursorResult, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool


def make_engine(url: str, *, pooled: bool = True) -> Engine:
    """`pooled=False`: a connection per session, closed with it, and a PostgreSQL connect that
    gives up after 5 s: for a process that forks (no pooled socket is inherited by a child) and
    must not hang on a database that does not answer (a worker's heartbeat)."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True} if pooled else {"poolclass": NullPool}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    elif url.startswith("postgresql") and not pooled:
        kwargs["connect_args"] = {"connect_timeout": 5}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def rowcount(result: Any) -> int:
    """Rows an UPDATE/DELETE matched (`Session.execute` is typed as returning a plain Result)."""
    assert isinstance(result, CursorResult)
    return int(result.rowcount)

"""Engine and session factory. SQLite gets WAL and a busy timeout so the API, the embedded worker
and a job's heartbeat thread can write to one file without `database is locked` errors, and its
transactions begin when SQLAlchemy begins them (see `_sqlite_begin`), so that a SAVEPOINT is part
of the transaction around it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, CursorResult, Engine, create_engine, event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

#: Execution option of a session or connection that only reads: on SQLite its transaction begins
#: DEFERRED (a snapshot, no lock) instead of IMMEDIATE. Ignored by PostgreSQL.
READ_ONLY = "tas_read_only"


def make_engine(url: str, *, pooled: bool = True, sqlite_wait_s: float = 30.0) -> Engine:
    """`pooled=False`: a connection per session, closed with it, and a PostgreSQL connect that
    gives up after 5 s: for a process that forks (no pooled socket is inherited by a child) and
    must not hang on a database that does not answer (a worker's heartbeat)."""
    # A pooled SQLite connection is a file handle that never goes stale: pinging it before each
    # checkout (a query) is for servers across a network.
    ping = not url.startswith("sqlite")
    kwargs: dict[str, Any] = {"pool_pre_ping": ping} if pooled else {"poolclass": NullPool}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": sqlite_wait_s}
    elif url.startswith("postgresql") and not pooled:
        kwargs["connect_args"] = {"connect_timeout": 5}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        busy_ms = int(sqlite_wait_s * 1000)

        def connect(dbapi_conn: Any, record: Any) -> None:
            _sqlite_connect(dbapi_conn, record, busy_ms)

        event.listen(engine, "connect", connect)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_conn: Any, _record: Any, busy_ms: int) -> None:
    # SQLAlchemy's pysqlite recipe, first half: the sqlite3 module never emits BEGIN itself. In
    # its legacy mode it begins only before INSERT/UPDATE/DELETE, so a SAVEPOINT that comes first
    # opens a transaction of its own, which its RELEASE commits whatever the caller does next.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={busy_ms}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


#: How long a kept reader (run on the event loop) waits for a locked SQLite file before giving
#: up; the read is then retried on a worker thread, where waiting blocks nothing else.
INLINE_WAIT_S = 0.05


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


class KeptReaders:
    """Read-only connections kept open between requests, for the reads that clients and the
    dashboard poll (GET /jobs/{id}): on SQLite, checking a connection out of the pool and back in
    (the pool's bookkeeping, its reset, SQLAlchemy's events) and an ORM session around it cost
    several times the read itself. Each use is one read-only transaction, begun and rolled back,
    so every read sees what was committed before it began, never an old snapshot.

    SQLite only, from an engine (a pool) of their own, so that keeping them open never leaves
    the main pool short: a file's connection never goes stale. Elsewhere (PostgreSQL, whose
    connections do) each use checks one out of the shared engine's pool, pinged, as any session
    does. At most `keep` are kept idle; a connection that failed is closed, not kept."""

    def __init__(self, url: str, shared: Engine, *, keep: int) -> None:
        own = url.startswith("sqlite") and ":memory:" not in url and url != "sqlite://"
        self._own = make_engine(url, sqlite_wait_s=INLINE_WAIT_S) if own else None
        self._engine = (self._own or shared).execution_options(**{READ_ONLY: True})
        self._keep = keep if own else 0
        #: Whether a read may run on the caller's own thread (the API's event loop): on a local
        #: SQLite file in WAL mode a reader does not wait for writers, and the read (well under
        #: a millisecond) costs less than handing it to a worker thread and back, which under
        #: load (the GIL passed between the loop and the thread) halved GET /jobs/{id}'s
        #: requests/s. In the rare case that a reader must wait (another connection holding the
        #: file exclusively, a WAL recovery), these connections give up after
        #: INLINE_WAIT_S (connecting included) and the caller retries on a thread with
        #: `patient()`.
        self.inline = own
        self._shared = shared.execution_options(**{READ_ONLY: True})
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection in a read-only transaction, rolled back when the block ends."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._engine.connect()
        try:
            trans = conn.begin()
            try:
                yield conn
            finally:
                trans.rollback()
        except SQLAlchemyError:
            conn.close()  # back to the pool, which resets or discards it
            raise
        except BaseException:
            self._put_back(conn)  # e.g. a 404: the connection itself is fine
            raise
        self._put_back(conn)

    @contextmanager
    def patient(self) -> Iterator[Connection]:
        """A read-only transaction on a connection of the shared engine, which waits for a lock
        as long as every other reader does: the retry of an inline read that gave up."""
        with self._shared.connect() as conn, conn.begin() as trans:
            try:
                yield conn
            finally:
                trans.rollback()

    def _put_back(self, conn: Connection) -> None:
        if not conn.invalidated and not conn.closed:
            with self._lock:
                if not self._closed and len(self._idle) < self._keep:
                    self._idle.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        """Close the idle connections (and those in use as they come back), then the engine."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        if self._own is not None:
            self._own.dispose()


def rowcount(result: Any) -> int:
    """Rows an UPDATE/DELETE matched (`Session.execute` is typed as returning a plain Result)."""
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def ping(session: Session) -> None:
    """A round trip to the database (readiness): raises whatever the driver raises when it does
    not answer."""
    session.execute(text("SELECT 1"))

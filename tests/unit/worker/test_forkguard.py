"""The worker's main process never forks in the middle of a database call (worker/forkguard.py)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from sqlalchemy import text

from tas.store.engine import make_engine, make_sessionmaker
from worker.forkguard import GUARD, ForkGuard


def test_a_fork_waits_for_a_database_call_in_another_thread() -> None:
    ended: list[float] = []
    entered = threading.Event()

    def call() -> None:
        with GUARD.database():
            entered.set()
            time.sleep(0.3)
            ended.append(time.monotonic())

    t = threading.Thread(target=call)
    t.start()
    assert entered.wait(5)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    forked = time.monotonic()
    assert os.waitpid(pid, 0)[1] == 0
    t.join()
    assert ended and forked >= ended[0], "forked while the call was still running"


def test_a_call_starting_during_a_fork_waits_for_it_and_a_nested_one_does_not() -> None:
    guard = ForkGuard()
    guard.before_fork()  # a fork in progress (nothing to wait for)
    started = threading.Event()

    def call() -> None:
        with guard.database():
            started.set()

    t = threading.Thread(target=call)
    t.start()
    assert not started.wait(0.2), "a database call began while the process was forking"
    guard.after_fork_in_parent()
    assert started.wait(5)
    t.join()

    with guard.database():
        guard.before_fork()  # this thread forks from inside its own call: no self-wait
        guard.after_fork_in_parent()
        with guard.database():  # nested in the same thread
            assert guard.busy()
    assert not guard.busy()


def test_a_fork_gives_up_waiting_for_a_hung_call() -> None:
    guard = ForkGuard(wait_s=0.2)
    release = threading.Event()
    inside = threading.Event()

    def hung() -> None:
        with guard.database():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=hung)
    t.start()
    assert inside.wait(5)
    t0 = time.monotonic()
    guard.before_fork()
    guard.after_fork_in_parent()
    assert 0.15 <= time.monotonic() - t0 < 2
    release.set()
    t.join()


def test_children_forked_beside_a_busy_gate_reach_the_database(tmp_path: Path) -> None:
    """The defect: a thread of the worker's main process runs SQLite transactions (the gate)
    while the pool forks. Unguarded, about four forks in ten made a child whose own connection
    found the write lock "held by this process" (`database is locked` after the busy timeout) or
    hung on a SQLite mutex. Guarded, every child reaches the database."""
    url = f"sqlite:///{tmp_path / 'f.db'}"
    engine = make_engine(url, pooled=False)
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
        c.exec_driver_sql("INSERT INTO t VALUES (1, 0)")
    sessions = make_sessionmaker(engine)
    stop = threading.Event()
    queries = [0]

    def gate() -> None:
        while not stop.is_set():
            with GUARD.database(), sessions() as s:  # BEGIN IMMEDIATE, as the gate's reads
                s.execute(text("SELECT v FROM t WHERE id = 1")).first()
            queries[0] += 1

    t = threading.Thread(target=gate, daemon=True)
    t.start()
    statuses = []
    try:
        for _ in range(40):
            pid = os.fork()
            if pid == 0:
                signal.alarm(6)  # a hung child is killed, and counted
                try:
                    own = make_sessionmaker(make_engine(url, sqlite_wait_s=2))
                    with own() as s:
                        s.execute(text("UPDATE t SET v = v + 1 WHERE id = 1"))
                        s.commit()
                    os._exit(0)
                except BaseException:
                    os._exit(3)
            statuses.append(os.waitpid(pid, 0)[1])
    finally:
        stop.set()
        t.join(5)
    assert queries[0] > 40  # the gate really ran beside the forks
    assert statuses == [0] * 40

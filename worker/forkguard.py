"""The worker's main process never forks a pool child in the middle of a database call.

fork() copies one thread, and with it the memory every other thread was using at that instant.
The main process uses the database from several threads (the gate on the consumer's thread, the
settlement of a dead child on the pool's result thread) while the pool forks its children from
another (billiard's supervisor thread, on the embedded stack). A child forked while a SQLite
transaction is open in the main process inherits SQLite's in-process record of that transaction:
its own connection, opened later on the same file, finds the write lock "held by this process",
so every `BEGIN IMMEDIATE` it runs waits out the busy timeout and fails; forked while a SQLite
call is running, it inherits a mutex held by a thread it does not have, and its first query hangs
for ever. Either way the child never claims the job it was forked for (a stress run of short jobs
on one worker hit it about once in two hundred jobs).

So every database use of the main process runs inside `GUARD.database()`, and a fork waits until
none is in progress (holding new ones off until it is done). A fork waits at most `FORK_WAIT_S`
for them: past it, it forks anyway and says so, since a database that hangs must not stop the
pool from replacing its children (the pool's start watchdog is the backstop)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

#: How long a fork waits for database calls in progress in other threads.
FORK_WAIT_S = 5.0


class ForkGuard:
    """Database sections and forks of this process exclude each other (a fork also waits for
    sections to end, and sections starting meanwhile wait for the fork)."""

    def __init__(self, wait_s: float = FORK_WAIT_S) -> None:
        self.wait_s = wait_s
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._sections: dict[int, int] = {}  # thread id -> nesting depth
        self._forks = 0

    @contextmanager
    def database(self) -> Iterator[None]:
        """A stretch of database use (a session, from its first query to its close)."""
        me = threading.get_ident()
        with self._cond:
            if me not in self._sections:  # a nested section is already counted
                self._cond.wait_for(lambda: self._forks == 0)
            self._sections[me] = self._sections.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                depth = self._sections.pop(me) - 1
                if depth:
                    self._sections[me] = depth
                self._cond.notify_all()

    def busy(self) -> bool:
        """Whether a database section is in progress (in any thread)."""
        with self._cond:
            return bool(self._sections)

    def before_fork(self) -> None:
        me = threading.get_ident()
        with self._cond:
            self._forks += 1
            # The forking thread's own section (if it forks from inside one) is not waited for.
            quiet = self._cond.wait_for(lambda: not self._sections.keys() - {me}, self.wait_s)
        if not quiet:
            log.warning(
                "forking while a database call has run for over %.0f s in another thread;"
                " the new pool child may not reach the database (the start watchdog replaces it)",
                self.wait_s,
            )

    def after_fork_in_parent(self) -> None:
        with self._cond:
            self._forks -= 1
            self._cond.notify_all()

    def after_fork_in_child(self) -> None:
        # The threads that held sections do not exist here, and the lock may be held by one.
        self._reset()


#: The worker's main process's guard; its hooks run around every os.fork() of the process.
GUARD = ForkGuard()
os.register_at_fork(
    before=GUARD.before_fork,
    after_in_parent=GUARD.after_fork_in_parent,
    after_in_child=GUARD.after_fork_in_child,
)

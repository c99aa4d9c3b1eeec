"""A unit of work: one transaction, committed whole or not at all, and the effects that wait for
its commit.

Routes, services and the store add, change and flush rows; they never commit. Whoever opened the
session ends it: the HTTP request through `unit_of_work` (`app/api/deps.py`: committed when the
route returns, rolled back when it raises); a worker's task step, a report flush and a reaper pass
commit their own sessions at their end.

Some effects must not happen before the commit, and not at all after a rollback: a job id on the
broker must name a row a worker can read, files must stay while a row that names them may yet
come back, and the predictor cache must be told of a registry change only once others can see it.
Code inside the unit queues them with `after_commit`; `unit_of_work` runs them, in order, once the
commit has succeeded.

A unique key that a concurrent transaction may take first (two identical uploads at once) is
inserted with `insert_or_get`, inside a SAVEPOINT: losing the race undoes that INSERT only, never
the caller's earlier work (SQLite needs `tas.store.engine`'s BEGIN for that)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

P = ParamSpec("P")
Row = TypeVar("Row")

#: `Session.info` key of the unit's queue of after-commit actions.
_PENDING = "tas.after_commit"

log = logging.getLogger(__name__)


@contextmanager
def unit_of_work(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session that is committed when the block ends and rolled back when it raises; the
    actions queued with `after_commit` run after a successful commit, never otherwise."""
    pending: list[Callable[[], object]] = []
    with sessions(info={_PENDING: pending}) as session:
        try:
            yield session
            if session.in_transaction():  # one nothing used has nothing to commit
                session.commit()
        except BaseException:
            session.rollback()
            raise
    _run(pending)


def after_commit(
    session: Session, action: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs
) -> None:
    """Run `action(*args, **kwargs)` once the unit of work `session` belongs to has committed
    (the arguments are taken now); never if it rolls back."""
    pending: list[Callable[[], object]] | None = session.info.get(_PENDING)
    if pending is None:
        raise RuntimeError("after_commit() needs a session opened by unit_of_work(), which runs it")
    pending.append(functools.partial(action, *args, **kwargs))


def pending_actions(session: Session) -> bool:
    """Whether actions wait for this unit's commit (whoever ends the unit may then block)."""
    return bool(session.info.get(_PENDING))


def _run(actions: list[Callable[[], object]]) -> None:
    """Every action runs even when one before it raised (they are independent: a failed cache
    notice must not keep a job's message from the broker). The commit stands either way; the
    first error is raised again afterwards, so the request still answers with it."""
    first: Exception | None = None
    for action in actions:
        try:
            action()
        except Exception as exc:
            if first is None:
                first = exc
            else:
                log.exception("after-commit action %r failed", action)
    if first is not None:
        raise first


def insert_or_get(
    session: Session, row: Row, existing: Callable[[], Row | None]
) -> tuple[Row, bool]:
    """Insert `row`, or, when a unique key says a concurrent transaction inserted the same thing
    first, the row `existing` finds: (the row, whether it is the new one). The INSERT runs in a
    SAVEPOINT, so the caller's transaction and its earlier work carry on either way. An
    IntegrityError that `existing` does not explain (another constraint) is raised."""
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        found = existing()
        if found is None:
            raise
        return found, False
    return row, True

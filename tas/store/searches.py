"""Searches as rows: create, read, list, cancel; the lease of the API process driving one; its
trials (`SearchTrial`) and the jobs they run as. Nothing here commits: the caller's unit of work
does."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from tas.errors import Conflict, JobFinished, NotFound
from tas.store import jobs as job_store
from tas.store import pagination
from tas.store.engine import rowcount
from tas.store.orm import (
    Job,
    MetricRow,
    Search,
    SearchStatus,
    SearchTrial,
    utcnow,
)

#: A search the controller is starting trials for or waiting on.
ACTIVE = (SearchStatus.queued.value, SearchStatus.running.value)
#: Trial states, as GET /searches/{id} shows them.
TRIAL_STATES = ("running", "complete", "pruned", "failed")


class SearchNotFound(NotFound):
    def __init__(self, search_id: str) -> None:
        super().__init__(f"search {search_id!r} not found; GET /searches lists yours")


class SearchFinished(Conflict):
    def __init__(self, search_id: str, status: str) -> None:
        super().__init__(
            f"search {search_id!r} is already {status}; only a queued or running search can be"
            " cancelled"
        )


class LeaseLost(Exception):
    """Another process drives the search now (`hold_lease` failed): this one stops writing."""


def create_search(session: Session, **values: Any) -> Search:
    search = Search(**values)
    session.add(search)
    session.flush()
    return search


def get_search(session: Session, search_id: str, *, tenant: str | None) -> Search:
    """The search, filtered by its tenant in the statement (another tenant's is a 404, as an
    unknown one); `tenant=None` for the controller, which drives every tenant's searches."""
    q = select(Search).where(Search.id == search_id)
    if tenant is not None:
        q = q.where(Search.tenant == tenant)
    search = session.scalar(q)
    if search is None:
        raise SearchNotFound(search_id)
    return search


def list_searches(
    session: Session,
    *,
    tenant: str,
    limit: int,
    cursor: str | None,
    statuses: Sequence[str] = (),
) -> pagination.Page[Search]:
    """Newest first, keyset-paged as GET /jobs is."""
    q = select(Search).where(Search.tenant == tenant)
    if statuses:
        q = q.where(Search.status.in_(list(statuses)))
    return pagination.paginate(
        session, q, created_col=Search.created_at, id_col=Search.id, limit=limit, cursor=cursor
    )


def trials(session: Session, search_id: str) -> list[SearchTrial]:
    q = select(SearchTrial).where(SearchTrial.search_id == search_id)
    return list(session.scalars(q.order_by(SearchTrial.number)))


def trial_counts(session: Session, search_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per search, its trials by state (every state present, 0 when none)."""
    out = {sid: dict.fromkeys(TRIAL_STATES, 0) for sid in search_ids}
    if not search_ids:
        return out
    rows = session.execute(
        select(SearchTrial.search_id, SearchTrial.state, func.count())
        .where(SearchTrial.search_id.in_(list(search_ids)))
        .group_by(SearchTrial.search_id, SearchTrial.state)
    )
    for sid, state, n in rows:
        out[sid][state] = int(n)
    return out


def unsettled(session: Session) -> list[str]:
    """Searches the controller still has work on, oldest first."""
    q = select(Search.id).where(Search.settled.is_(False)).order_by(Search.created_at)
    return list(session.scalars(q))


def take_lease(session: Session, search_id: str, owner: str, seconds: float) -> bool:
    """Make `owner` the process driving the search for `seconds` (renewed when it holds it
    already): one conditional UPDATE, so of two processes asking at once one gets it."""
    now = utcnow()
    return bool(
        rowcount(
            session.execute(
                update(Search)
                .where(
                    Search.id == search_id,
                    Search.settled.is_(False),
                    or_(
                        Search.lease_owner == owner,
                        Search.lease_until.is_(None),
                        Search.lease_until < now,
                    ),
                )
                .values(lease_owner=owner, lease_until=now + timedelta(seconds=seconds))
            )
        )
    )


def hold_lease(session: Session, search_id: str, owner: str, seconds: float) -> bool:
    """The fence of every write the controller makes: renews the lease in the writing
    transaction, or says it was lost (expired and taken over), when the write must not happen."""
    now = utcnow()
    return bool(
        rowcount(
            session.execute(
                update(Search)
                .where(
                    Search.id == search_id,
                    Search.lease_owner == owner,
                    Search.lease_until >= now,
                )
                .values(lease_until=now + timedelta(seconds=seconds))
            )
        )
    )


def release_leases(session: Session, owner: str) -> None:
    """A stopping process hands its searches back at once (another may take them over)."""
    session.execute(
        update(Search).where(Search.lease_owner == owner).values(lease_owner=None, lease_until=None)
    )


@dataclass(frozen=True)
class TrialJob:
    """A trial's job as the controller reads it each step."""

    number: int
    job_id: str | None
    status: str | None
    cancel_requested: bool


def trial_jobs(session: Session, search_id: str) -> dict[int, TrialJob]:
    """Every trial of the search with its job's status (None when the job was deleted)."""
    rows = session.execute(
        select(SearchTrial.number, SearchTrial.job_id, Job.status, Job.cancel_requested)
        .outerjoin(Job, Job.id == SearchTrial.job_id)
        .where(SearchTrial.search_id == search_id)
    )
    return {n: TrialJob(n, job_id, status, bool(cancel)) for n, job_id, status, cancel in rows}


def active_trial_jobs(session: Session, search_id: str) -> int:
    """The search's jobs that are queued or running (a pruned one still stopping included)."""
    n = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.search_id == search_id, Job.status.in_(job_store.ACTIVE))
    )
    return int(n or 0)


@dataclass(frozen=True)
class EpochValues:
    """A job's epoch rows as the controller reads them: how many, and the objective after each
    (epochs whose row lacks a finite value are absent)."""

    epochs: int
    values: dict[int, float]


def epoch_values(session: Session, job_ids: Iterable[str], metric: str) -> dict[str, EpochValues]:
    ids = list(job_ids)
    out = {job_id: EpochValues(0, {}) for job_id in ids}
    if not ids:
        return out
    rows = session.execute(
        select(MetricRow.job_id, MetricRow.epoch, MetricRow.values)
        .where(MetricRow.job_id.in_(ids), MetricRow.step == -1)
        .order_by(MetricRow.job_id, MetricRow.epoch)
    )
    counts: dict[str, int] = dict.fromkeys(ids, 0)
    values: dict[str, dict[int, float]] = {job_id: {} for job_id in ids}
    for job_id, epoch, row in rows:
        counts[job_id] += 1
        v = (row or {}).get(metric)
        if (
            isinstance(v, int | float)
            and not isinstance(v, bool)
            and v == v
            and abs(v) != float("inf")
        ):
            values[job_id][int(epoch)] = float(v)
    return {job_id: EpochValues(counts[job_id], values[job_id]) for job_id in ids}


def request_cancel(session: Session, search: Search) -> Search:
    """Cancel a queued or running search: its queued trial jobs at once, its running ones at their
    next step (the job's own cancel); the controller then tells Optuna and settles it. 409 once
    it has finished."""
    now = utcnow()
    done = rowcount(
        session.execute(
            update(Search)
            .where(Search.id == search.id, Search.status.in_(ACTIVE))
            .values(
                status=SearchStatus.cancelled.value,
                finished_at=now,
                waiting_for=None,
                updated_at=now,
            )
        )
    )
    session.refresh(search)
    if not done:
        raise SearchFinished(search.id, search.status)
    jobs = session.scalars(
        select(Job).where(Job.search_id == search.id, Job.status.in_(job_store.ACTIVE))
    )
    for job in list(jobs):
        with contextlib.suppress(JobFinished):  # it finished meanwhile
            job_store.request_cancel(session, job)
    return search


def finish(
    session: Session,
    search_id: str,
    status: SearchStatus,
    *,
    best_trial: int | None = None,
    model: dict[str, Any] | None = None,
    importances: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Settle the search: nothing is left for the controller to do."""
    now = at or utcnow()
    values: dict[str, Any] = {
        "settled": True,
        "waiting_for": None,
        "lease_owner": None,
        "lease_until": None,
        "updated_at": now,
    }
    search = session.get(Search, search_id)
    assert search is not None
    if search.status in ACTIVE:
        values.update(status=status.value, finished_at=now)
    if best_trial is not None:
        values["best_trial"] = best_trial
    if model is not None:
        values["model"] = model
    if importances is not None:
        values["importances"] = importances
    if error is not None:
        values["error"] = error
    session.execute(update(Search).where(Search.id == search_id).values(**values))

"""What a job's event stream reads besides the job itself: its metric rows and log lines written
after a cursor (a row id), for many jobs in one statement, and where each job's rows end now.

Row ids are the cursors: both tables number rows with an ascending integer key, so "every row of
the job with an id above N" is what was written since N, provided a lower id never commits after
a higher one. On SQLite writers run one at a time (BEGIN IMMEDIATE), so it never does. On
PostgreSQL a sequence hands out ids before commit: a job's metric rows have one writer (the run
holding its lease) and stay in order, but two of its log writers committing at the same moment
(the run's heartbeat and its stage lines, or the reaper) could, in a window of milliseconds, put a
line behind a cursor that has already passed it. A replayed epoch's metric rows are deleted and
written again, with new, higher ids: a follower sees them again, as the chart must."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from tas.store.orm import JobLog, MetricRow


def heads(session: Session, job_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Per job, the highest metric row id and log line id so far (0: none)."""
    out = {job_id: (0, 0) for job_id in job_ids}
    metric = select(MetricRow.job_id, func.max(MetricRow.id)).where(MetricRow.job_id.in_(job_ids))
    for job_id, top in session.execute(metric.group_by(MetricRow.job_id)):
        out[job_id] = (int(top or 0), 0)
    log = select(JobLog.job_id, func.max(JobLog.id)).where(JobLog.job_id.in_(job_ids))
    for job_id, top in session.execute(log.group_by(JobLog.job_id)):
        out[job_id] = (out[job_id][0], int(top or 0))
    return out


def _after(
    job_col: InstrumentedAttribute[str],
    id_col: InstrumentedAttribute[int],
    after: Mapping[str, int],
) -> ColumnElement[bool]:
    return or_(*(and_(job_col == job_id, id_col > cursor) for job_id, cursor in after.items()))


def metric_rows_after(session: Session, after: Mapping[str, int], *, limit: int) -> list[MetricRow]:
    """The metric rows of each job in `after` with an id above its cursor, by id, at most
    `limit` (a full answer: read again from the last id)."""
    if not after:
        return []
    q = select(MetricRow).where(_after(MetricRow.job_id, MetricRow.id, after))
    return list(session.scalars(q.order_by(MetricRow.id).limit(limit)))


def log_lines_after(session: Session, after: Mapping[str, int], *, limit: int) -> list[JobLog]:
    """The log lines of each job in `after` with an id above its cursor, by id, at most `limit`."""
    if not after:
        return []
    q = select(JobLog).where(_after(JobLog.job_id, JobLog.id, after))
    return list(session.scalars(q.order_by(JobLog.id).limit(limit)))

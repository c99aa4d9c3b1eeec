"""Live job updates for `GET /jobs/{id}/events`: one poller for every watched job, fanned out to
each stream, and a bound on how many streams are open.

A stream sends four kinds of events (README, "Following a job, live"): `job` (the job as `GET /jobs/{id}`
shows it, each time it changes), `metric` (a metric row as `GET /jobs/{id}/metrics` shows it, as
it is written), `log` (a log line as `GET /jobs/{id}/logs` shows it) and, from the route, `end`
once the job has finished. Every event's `id:` packs three cursors read from the database (the
job's version, the last metric row id and the last log line id sent: `Cursor`), so a client that
reconnects with `Last-Event-ID`, to this process or another one, gets exactly what it had not
received: the log lines and metric rows after its cursors, then the job if it changed since.

A stream holds no database connection while it waits. The first stream on a job reads it with a
short-lived session of its own (closed before the first byte is sent; later streams on that job
start from the latest snapshot); after that a single task reads every watched job in one query
per interval, with one hop to a worker thread, and hands each stream the latest snapshot of its
job. So N dashboards cost one query per interval instead of N sessions held open (the pool is
5 + 10 connections: fifteen streams holding one each would starve every other request), and plain
requests never queue behind streams for a connection or for a threadpool slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TypeVar, TypeVarTuple

import anyio
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.schemas.jobs import JobOut, LogLineOut
from tas.errors import JobNotFound, TooManyRequests
from tas.store import job_feed, workers
from tas.store import jobs as job_store
from tas.store.orm import FINISHED, Job, JobLog, MetricRow, Worker

log = logging.getLogger(__name__)

#: What a refused client is told to wait (seconds). Streams last as long as jobs, so there is no
#: better estimate of when a slot frees; a few seconds keeps a retry loop from hammering the API.
RETRY_AFTER_S = 5
#: Worker threads (and so pooled connections) the streams' reads use at once.
READ_THREADS = 2
#: Metric rows or log lines one read answers at most (a poll of every watched job, or one
#: step of a stream's catch-up); a full answer is followed by another read at once.
ROWS_PER_READ = 1000
#: Rows a stream may hold that its client has not read yet. A client that far behind is cut
#: off (without an `end` event): it reconnects with its last id and is served from the database,
#: so a slow reader costs the API bounded memory and still misses nothing.
MAX_PENDING_ROWS = 10_000
#: Reads in a row a poll makes while every read comes back full; the rest waits for the next poll.
MAX_READS_PER_POLL = 10
#: One field of an event id: ids of the metric and log tables are 32-bit integers (PostgreSQL's
#: `integer`), under 10**10.
ID_FIELD = 10**10

T = TypeVar("T")
Args = TypeVarTuple("Args")


def _micros(dt: datetime | None) -> int:
    if dt is None:
        return 0
    if dt.tzinfo is None:  # SQLite hands back naive datetimes; they are stored in UTC
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000)


@dataclass(frozen=True)
class Snapshot:
    """A job as `GET /jobs/{id}` shows it, and when it last changed.

    `version` (microseconds since the epoch of the latest write to the job's row or its stages)
    comes from the database, not from this process, so it orders snapshots across API processes
    and restarts: what an event's `id:` needs for a client to resume where it left off."""

    version: int
    status: str
    data: str
    tenant: str

    @classmethod
    def of(cls, job: Job) -> Snapshot:
        version = max(
            [_micros(job.updated_at)]
            + [max(_micros(s.started_at), _micros(s.finished_at)) for s in job.stages]
        )
        return cls(version, job.status, JobOut.model_validate(job).model_dump_json(), job.tenant)


@dataclass(frozen=True)
class Cursor:
    """Where a stream stands: the version of the last `job` event sent, and the ids of the last
    metric row and log line sent. An event's `id:` is the cursor after it, packed in one decimal
    integer, `(version * 10**10 + metric) * 10**10 + log`: each event moves one field forward and
    none back, so ids increase within a stream, and the id alone says where to resume."""

    version: int = 0
    metric: int = 0
    log: int = 0

    def encode(self) -> str:
        return str((self.version * ID_FIELD + self.metric) * ID_FIELD + self.log)

    @classmethod
    def decode(cls, raw: str) -> Cursor:
        """The cursor an id names; ValueError for anything that is not one of ours."""
        raw = raw.strip()
        if not raw.isascii() or not raw.isdigit() or len(raw) > 40:
            raise ValueError(f"not an event id of this stream: {raw[:40]!r}")
        rest, log = divmod(int(raw), ID_FIELD)
        version, metric = divmod(rest, ID_FIELD)
        return cls(version, metric, log)


RowKind = Literal["metric", "log"]


@dataclass(frozen=True)
class Row:
    """A metric row or a log line, as its event's data."""

    kind: RowKind
    id: int
    job_id: str
    data: str

    @classmethod
    def of_metric(cls, r: MetricRow) -> Row:
        step = None if r.step < 0 else r.step
        data = json.dumps({**r.values, "epoch": r.epoch, "step": step})
        return cls("metric", r.id, r.job_id, data)

    @classmethod
    def of_log(cls, line: JobLog) -> Row:
        return cls("log", line.id, line.job_id, LogLineOut.model_validate(line).model_dump_json())


@dataclass
class Rows:
    """What one read found: rows by job (log lines, then metric rows, each by id), and whether
    it stopped at its bound (more remain)."""

    by_job: dict[str, list[Row]] = field(default_factory=dict)
    more: bool = False


def advance(head: tuple[int, int], rows: Sequence[Row]) -> tuple[int, int]:
    """(metric, log) cursors moved past `rows`."""
    metric, line = head
    for r in rows:
        if r.kind == "metric":
            metric = max(metric, r.id)
        else:
            line = max(line, r.id)
    return metric, line


def read_rows(session: Session, after: dict[str, tuple[int, int]], limit: int) -> Rows:
    """Log lines, then metric rows, of each job after its (metric, log) cursors."""
    out = Rows()
    logs = job_feed.log_lines_after(session, {j: c[1] for j, c in after.items()}, limit=limit)
    metrics = job_feed.metric_rows_after(session, {j: c[0] for j, c in after.items()}, limit=limit)
    out.more = len(logs) >= limit or len(metrics) >= limit
    for row in [Row.of_log(x) for x in logs] + [Row.of_metric(x) for x in metrics]:
        out.by_job.setdefault(row.job_id, []).append(row)
    return out


class Watch:
    """One open stream: its slot in the bound, the latest snapshot it has not sent yet, and the
    rows (metric rows, log lines) it has not sent yet.

    Only the latest snapshot is kept: each `job` event carries the whole job, so a slow client
    skips the states it had no time to read. Rows are each an event of their own and are queued,
    at most MAX_PENDING_ROWS of them."""

    def __init__(
        self,
        hub: JobStreams,
        job_id: str,
        tenant: str,
        first: Snapshot,
        start: Cursor | None = None,
    ) -> None:
        self.hub = hub
        self.job_id = job_id
        self.tenant = tenant
        #: Where the client stands: the last event's id, or the `Last-Event-ID` it came back with.
        self.cursor = start or Cursor()
        #: The job's final status once the stream ended because the job finished (the route
        #: then sends `end`); None while it runs, and when the stream was cut.
        self.final_status: str | None = None
        self._pending: Snapshot | None = first
        self._rows: deque[Row] = deque()
        self._ready = asyncio.Event()
        self._ready.set()
        self._ended = False
        self._dropped = False
        self._closed = False
        self._sent_data: str | None = None
        self._sent_version = 0
        #: A job state at or before this version is one the client had before it reconnected.
        self._floor = self.cursor.version

    def offer(self, snap: Snapshot | None, rows: Sequence[Row] = ()) -> None:
        """A poll's findings: new rows (kept in order, sent before the snapshot) and the job."""
        if rows:
            self._rows.extend(rows)
            if len(self._rows) > MAX_PENDING_ROWS:
                self._dropped = True  # cut off: the client resumes from its last id
                self._rows.clear()
            self._ready.set()
        if snap is None or snap.data == self._sent_data:
            return
        if self._pending is not None and snap.version < self._pending.version:
            return  # a poll that began before this stream's own first read
        self._pending = snap
        self._ready.set()

    def end(self) -> None:
        """The stream finishes after anything already pending (the job is gone, or shutdown)."""
        self._ended = True
        self._ready.set()

    def _event(self, row: Row) -> dict[str, str] | None:
        """The row's event, moving the cursor past it; None for a row the client already has (a
        catch-up read and a poll can both find it)."""
        c = self.cursor
        if row.kind == "metric":
            if row.id <= c.metric:
                return None
            self.cursor = Cursor(c.version, row.id, c.log)
        else:
            if row.id <= c.log:
                return None
            self.cursor = Cursor(c.version, c.metric, row.id)
        return {"event": row.kind, "id": self.cursor.encode(), "data": row.data}

    async def events(self) -> AsyncIterator[dict[str, str]]:
        """First the rows after the stream's cursors, read from the database (what a resumed
        client missed, or a new stream's whole log), then, live, each poll's new rows followed by
        the job's JSON if it changed; the stream ends with the job.

        Ids increase strictly within a stream (`Cursor`). A `job` event's version is the job's,
        or one more than the last one sent when a new state shares the last one's version (a
        change the job's rows do not date, such as a worker coming up for a queued job's
        `waiting_for`)."""
        try:
            after = (self.cursor.metric, self.cursor.log)
            while True:  # catch up; live rows found meanwhile wait in the queue
                found = await self.hub._in_thread(self.hub._read_after, self.job_id, after)
                rows = found.by_job.get(self.job_id, [])
                after = advance(after, rows)
                for row in rows:
                    event = self._event(row)
                    if event is not None:
                        yield event
                if not found.more:
                    break
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._rows and not self._dropped:
                    event = self._event(self._rows.popleft())
                    if event is not None:
                        yield event
                if self._dropped:
                    return
                snap, self._pending = self._pending, None
                if snap is not None and snap.version >= self._sent_version:
                    if snap.data != self._sent_data and snap.version > self._floor:
                        c = self.cursor
                        self.cursor = Cursor(max(snap.version, c.version + 1), c.metric, c.log)
                        self._sent_data, self._sent_version = snap.data, snap.version
                        yield {"event": "job", "id": self.cursor.encode(), "data": snap.data}
                    if snap.status in FINISHED:
                        self.final_status = snap.status
                        return
                if self._ended and self._pending is None and not self._rows:
                    return
        finally:
            self.close()

    def close(self) -> None:
        """Give the slot back; safe to call more than once (the stream's end and the response's
        end both call it, whichever comes first)."""
        if not self._closed:
            self._closed = True
            self.hub._release(self)
        self.end()


class JobStreams:
    """Every open event stream of one API process. Lives on the event loop: all its state is
    touched from the loop only, so it needs no locks; the database is read on a worker thread."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        max_streams: int,
        max_per_tenant: int | None = None,
        interval_s: float = 0.5,
        worker_heartbeat_s: float = 5.0,
    ) -> None:
        self.sessions = sessions
        self.worker_heartbeat_s = worker_heartbeat_s  # for a queued job's waiting_for
        self._live: tuple[float, list[Worker]] | None = None
        self.max_streams = max_streams
        self.max_per_tenant = max_per_tenant
        self.interval_s = interval_s
        self._watchers: dict[str, set[Watch]] = {}
        #: The newest snapshot of each watched job: a stream opening on a job already watched
        #: starts from it (at most one interval old, as every stream's view) without a query.
        self._latest: dict[str, Snapshot] = {}
        #: Per watched job, the (metric row, log line) ids the poller has read up to: each poll
        #: reads what was written after them.
        self._heads: dict[str, tuple[int, int]] = {}
        self._open = 0
        self._by_tenant: Counter[str] = Counter()
        self._poller: asyncio.Task[None] | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        #: Database reads made by the poller (one per interval, whatever the number of streams).
        self.polls = 0

    @property
    def open_streams(self) -> int:
        return self._open

    @property
    def watched_jobs(self) -> int:
        return len(self._watchers)

    @property
    def polling(self) -> bool:
        return self._poller is not None

    async def watch(self, job_id: str, tenant: str, after: Cursor | None = None) -> Watch:
        """A slot and the job's current snapshot, or TooManyRequests (before any database work, so
        a flood of refused clients costs nothing) or JobNotFound. Only the first stream on a job
        reads it; the others start from the poller's latest snapshot.

        `after`: the cursor of the client's `Last-Event-ID`; the stream sends what came after it.
        None: a new stream, which sends the job, its whole log, and the metric rows written from
        now on (the rows before are `GET /jobs/{id}/metrics`'s, downsampled for a chart: a run's
        100,000 step rows are not replayed to every viewer)."""
        self._reserve(tenant)
        try:
            cached, known = self._latest.get(job_id), self._heads.get(job_id)
            if cached is None or known is None:
                first, head = await self._in_thread(self._read_first, job_id, tenant)
            elif cached.tenant != tenant:
                raise JobNotFound(job_id)
            else:
                first, head = cached, known
        except BaseException:
            self._unreserve(tenant)
            raise
        watch = Watch(self, job_id, tenant, first, after or Cursor(metric=head[0]))
        self._watchers.setdefault(job_id, set()).add(watch)
        self._remember(job_id, first)
        self._heads.setdefault(job_id, head)
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        return watch

    def _reserve(self, tenant: str) -> None:
        if self._open >= self.max_streams:
            raise TooManyRequests(
                f"too many open event streams ({self._open}, the most is TAS_MAX_EVENT_STREAMS="
                f"{self.max_streams}); close one, poll GET /jobs/{{id}}, or retry after "
                f"{RETRY_AFTER_S} s",
                retry_after_s=RETRY_AFTER_S,
            )
        if self.max_per_tenant is not None and self._by_tenant[tenant] >= self.max_per_tenant:
            raise TooManyRequests(
                f"too many open event streams for this tenant ({self._by_tenant[tenant]}, the most"
                f" is TAS_MAX_EVENT_STREAMS_PER_TENANT={self.max_per_tenant}); close one, poll"
                f" GET /jobs/{{id}}, or retry after {RETRY_AFTER_S} s",
                retry_after_s=RETRY_AFTER_S,
            )
        self._open += 1
        self._by_tenant[tenant] += 1

    def _unreserve(self, tenant: str) -> None:
        self._open -= 1
        self._by_tenant[tenant] -= 1
        if self._by_tenant[tenant] <= 0:
            del self._by_tenant[tenant]

    def _release(self, watch: Watch) -> None:
        self._unreserve(watch.tenant)
        watchers = self._watchers.get(watch.job_id)
        if watchers is not None:
            watchers.discard(watch)
            if not watchers:
                del self._watchers[watch.job_id]
                self._latest.pop(watch.job_id, None)
                self._heads.pop(watch.job_id, None)

    def _remember(self, job_id: str, snap: Snapshot) -> None:
        latest = self._latest.get(job_id)
        if job_id in self._watchers and (latest is None or snap.version >= latest.version):
            self._latest[job_id] = snap

    async def _in_thread(self, fn: Callable[[*Args], T], *args: *Args) -> T:
        """On a worker thread, at most READ_THREADS at once: a burst of streams opening on new
        jobs queues behind itself, never taking the threadpool's slots (40, shared with every
        plain route) or more than that many pooled connections from plain requests."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(READ_THREADS)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _read_one(self, job_id: str, tenant: str) -> Snapshot:
        """The same single statement as a poll (`job_store.get_job` would load stages apart),
        filtered by the tenant: another tenant's job is as unknown."""
        snap = self._read_many([job_id], tenant).get(job_id)
        if snap is None:
            raise JobNotFound(job_id)
        return snap

    def _read_first(self, job_id: str, tenant: str) -> tuple[Snapshot, tuple[int, int]]:
        """The job, then where its metric rows and log lines end (read after the job: a row
        written in between is after the head, so the poller sends it)."""
        snap = self._read_one(job_id, tenant)
        with self.sessions() as s:
            return snap, job_feed.heads(s, [job_id])[job_id]

    def _read_after(self, job_id: str, after: tuple[int, int]) -> Rows:
        """One step of a stream's catch-up: the job's rows after its (metric, log) cursors."""
        with self.sessions() as s:
            return read_rows(s, {job_id: after}, ROWS_PER_READ)

    def _read_tick(
        self, job_ids: Sequence[str], heads: dict[str, tuple[int, int]]
    ) -> tuple[dict[str, Snapshot], Rows]:
        """A poll: every watched job (one statement), then the rows written after the heads (one
        statement a table, read again at once while they come back full, at most
        MAX_READS_PER_POLL times). The jobs are read first: a job seen finished has all the rows
        its run wrote before finishing in the reads that follow, whatever the isolation level."""
        snaps = self._read_many(job_ids)
        rows = Rows()
        with self.sessions() as s:
            for _ in range(MAX_READS_PER_POLL):
                found = read_rows(s, heads, ROWS_PER_READ)
                for job_id, found_rows in found.by_job.items():
                    rows.by_job.setdefault(job_id, []).extend(found_rows)
                    heads[job_id] = advance(heads[job_id], found_rows)
                rows.more = found.more
                if not found.more:
                    break
        return snaps, rows

    def _read_many(self, job_ids: Sequence[str], tenant: str | None = None) -> dict[str, Snapshot]:
        """Every watched job and its stages in one statement (a join, not one query per job); a
        new stream's first read names its tenant, the poller's reads every watched job."""
        with self.sessions() as s:
            jobs = job_store.jobs_with_stages(s, job_ids, tenant=tenant)
            workers.annotate_with(jobs, lambda: self._live_workers(s))
            return {job.id: Snapshot.of(job) for job in jobs}

    def _live_workers(self, s: Session) -> list[Worker]:
        """For a queued job's waiting_for: read at most once per worker heartbeat (what it
        reports changes no faster), so a poll stays one statement however many jobs wait."""
        now = time.monotonic()
        if self._live is None or now >= self._live[0]:
            live = workers.live(s, heartbeat_s=self.worker_heartbeat_s)
            self._live = (now + self.worker_heartbeat_s, live)
        return self._live[1]

    async def _poll(self) -> None:
        """Runs while anyone watches; exits (and is started again by the next watcher) when the
        last stream closes, so an idle API does no polling."""
        try:
            while self._watchers:
                job_ids = list(self._watchers)
                heads = {j: self._heads.get(j, (0, 0)) for j in job_ids}
                more = False
                try:
                    snaps, rows = await self._in_thread(self._read_tick, job_ids, dict(heads))
                    self.polls += 1
                except Exception:
                    # A database hiccup delays updates; it must not end every stream.
                    log.warning("reading watched jobs failed; retrying", exc_info=True)
                else:
                    more = rows.more
                    for job_id in job_ids:
                        snap = snaps.get(job_id)
                        found = rows.by_job.get(job_id, [])
                        if found and job_id in self._heads:
                            self._heads[job_id] = advance(self._heads[job_id], found)
                        # A finished job waits while rows remain unread: its end comes after them.
                        offered = None if more and snap and snap.status in FINISHED else snap
                        for watch in list(self._watchers.get(job_id, ())):
                            if snap is None:  # deleted since the stream opened
                                watch.end()
                            else:
                                watch.offer(offered, found)
                        if snap is None:
                            self._latest.pop(job_id, None)
                        else:
                            self._remember(job_id, snap)
                await asyncio.sleep(0 if more else self.interval_s)
        finally:
            self._poller = None

    async def aclose(self) -> None:
        """Shutdown: end every stream and stop polling."""
        for watchers in list(self._watchers.values()):
            for watch in list(watchers):
                watch.end()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller


class StreamCollector(Collector):
    """Read at scrape time: open streams, jobs polled for them, and the database connections
    checked out of the pool, which stays near zero however many streams are open."""

    def __init__(self, streams: JobStreams, engine: Engine) -> None:
        self.streams = streams
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "tas_event_streams", "Open GET /jobs/{id}/events streams", self.streams.open_streams
        )
        yield GaugeMetricFamily(
            "tas_event_stream_jobs", "Jobs polled for open event streams", self.streams.watched_jobs
        )
        checked_out = getattr(self.engine.pool, "checkedout", None)
        if checked_out is not None:
            yield GaugeMetricFamily(
                "tas_db_pool_checked_out",
                "Database connections of this process's pool in use",
                checked_out(),
            )

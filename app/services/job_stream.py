"""Live job updates for `GET /jobs/{id}/events`: one poller for every watched job, fanned out to
each stream, and a bound on how many streams are open.

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
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar, TypeVarTuple

import anyio
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.schemas.jobs import JobOut
from tas.errors import JobNotFound, TooManyRequests
from tas.store import jobs as job_store
from tas.store import workers
from tas.store.orm import FINISHED, Job, Worker

log = logging.getLogger(__name__)

#: What a refused client is told to wait (seconds). Streams last as long as jobs, so there is no
#: better estimate of when a slot frees; a few seconds keeps a retry loop from hammering the API.
RETRY_AFTER_S = 5
#: Worker threads (and so pooled connections) the streams' reads use at once.
READ_THREADS = 2

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


class Watch:
    """One open stream: its slot in the bound and the latest snapshot it has not sent yet.

    Only the latest snapshot is kept, never a queue: each event carries the whole job, so a slow
    client skips the states it had no time to read, and memory per stream stays constant."""

    def __init__(self, hub: JobStreams, job_id: str, tenant: str, first: Snapshot) -> None:
        self.hub = hub
        self.job_id = job_id
        self.tenant = tenant
        self._pending: Snapshot | None = first
        self._ready = asyncio.Event()
        self._ready.set()
        self._ended = False
        self._closed = False
        self._sent_data: str | None = None
        self._sent_version = 0
        self._last_id = 0

    def offer(self, snap: Snapshot) -> None:
        if snap.data == self._sent_data:
            return
        if self._pending is not None and snap.version < self._pending.version:
            return  # a poll that began before this stream's own first read
        self._pending = snap
        self._ready.set()

    def end(self) -> None:
        """The stream finishes after anything already pending (the job is gone, or shutdown)."""
        self._ended = True
        self._ready.set()

    async def events(self) -> AsyncIterator[dict[str, str]]:
        """`event: job` with the job's JSON each time it changes; the stream ends with the job.

        Ids increase strictly within a stream: the snapshot's version, or one more than the last
        id when a new state shares the last one's version (a change the job's rows do not date,
        such as a worker coming up for a queued job's `waiting_for`)."""
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                snap, self._pending = self._pending, None
                if snap is not None and snap.version >= self._sent_version:
                    if snap.data != self._sent_data:
                        self._last_id = max(snap.version, self._last_id + 1)
                        self._sent_data, self._sent_version = snap.data, snap.version
                        yield {"event": "job", "id": str(self._last_id), "data": snap.data}
                    if snap.status in FINISHED:
                        return
                if self._ended and self._pending is None:
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

    async def watch(self, job_id: str, tenant: str) -> Watch:
        """A slot and the job's current snapshot, or TooManyRequests (before any database work, so
        a flood of refused clients costs nothing) or JobNotFound. Only the first stream on a job
        reads it; the others start from the poller's latest snapshot."""
        self._reserve(tenant)
        try:
            first = self._latest.get(job_id)
            if first is None:
                first = await self._in_thread(self._read_one, job_id, tenant)
            elif first.tenant != tenant:
                raise JobNotFound(job_id)
        except BaseException:
            self._unreserve(tenant)
            raise
        watch = Watch(self, job_id, tenant, first)
        self._watchers.setdefault(job_id, set()).add(watch)
        self._remember(job_id, first)
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
        """The same single statement as a poll (`job_store.get_job` would load stages apart)."""
        snap = self._read_many([job_id]).get(job_id)
        if snap is None or snap.tenant != tenant:  # another tenant's job is as unknown
            raise JobNotFound(job_id)
        return snap

    def _read_many(self, job_ids: Sequence[str]) -> dict[str, Snapshot]:
        """Every watched job and its stages in one statement (a join, not one query per job)."""
        with self.sessions() as s:
            jobs = job_store.jobs_with_stages(s, job_ids)
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
                try:
                    snaps = await self._in_thread(self._read_many, job_ids)
                    self.polls += 1
                except Exception:
                    # A database hiccup delays updates; it must not end every stream.
                    log.warning("reading watched jobs failed; retrying", exc_info=True)
                else:
                    for job_id in job_ids:
                        snap = snaps.get(job_id)
                        for watch in list(self._watchers.get(job_id, ())):
                            if snap is None:  # deleted since the stream opened
                                watch.end()
                            else:
                                watch.offer(snap)
                        if snap is None:
                            self._latest.pop(job_id, None)
                        else:
                            self._remember(job_id, snap)
                await asyncio.sleep(self.interval_s)
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

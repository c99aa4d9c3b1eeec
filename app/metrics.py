"""Prometheus metrics (`GET /metrics`): what the database knows, read at scrape time, and what
this process observes (HTTP requests, `/predict`).

Job, stage and training figures are computed from the database when scraped, not observed where
they happen: a job finishes in a worker's short-lived pool child, which has no endpoint to scrape,
and every API process must report the same totals however many there are. Each figure is one
aggregate query (the histograms' buckets are counted by the database), all in one session.
`/predict` is observed in this process, once per request (latency) and once per forward pass
(batch size), into plain per-model bucket lists (`LocalHistogram`) made once per model."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tas.queue import QUEUES
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store import workers
from tas.store.orm import Job, JobStage

JOB_SECONDS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
WAIT_SECONDS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600, 21600)
STAGE_SECONDS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 14400)
PREDICT_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
PREDICT_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


def seconds_between(
    start: InstrumentedAttribute[Any], end: InstrumentedAttribute[Any], dialect: str
) -> ColumnElement[Any]:
    """`end - start` in seconds, in SQL (SQLite stores datetimes as text: julianday reads it)."""
    if dialect == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def _histogram(
    session: Session,
    name: str,
    doc: str,
    value: ColumnElement[Any],
    labels: Sequence[InstrumentedAttribute[Any]],
    where: Sequence[ColumnElement[bool]],
    buckets: Sequence[float],
) -> HistogramMetricFamily:
    """A histogram whose buckets the database counts: one grouped query, no rows shipped. The
    value is computed once per row in a materialised CTE: a plain subquery is flattened into
    the outer query, which then computes it once per bucket (measured 3x slower on SQLite)."""
    rows = (
        select(*labels, value.label("v")).where(*where).cte("observed").prefix_with("MATERIALIZED")
    )
    keys = [rows.c[c.key] for c in labels]
    v = rows.c.v
    cols: list[Any] = [*keys, func.count(), func.coalesce(func.sum(v), 0.0)]
    cols += [func.sum(case((v <= b, 1), else_=0)) for b in buckets]
    h = HistogramMetricFamily(name, doc, labels=[c.key for c in labels])
    n = len(labels)
    for row in session.execute(select(*cols).group_by(*keys)):
        count, total, counts = int(row[n]), float(row[n + 1]), row[n + 2 :]
        series = [(_le(b), float(c or 0)) for b, c in zip(buckets, counts, strict=True)]
        h.add_metric(
            [str(x) for x in row[:n]], buckets=[*series, ("+Inf", float(count))], sum_value=total
        )
    return h


def _le(b: float) -> str:
    return str(float(b))


class DatabaseCollector(Collector):
    """Everything the database says, read at scrape time (see the module docstring)."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as s:
            dialect = s.get_bind().dialect.name
            yield from self._jobs(s)
            yield from self._workers(s)
            yield from self._durations(s, dialect)
            yield from self._training(s)

    def _jobs(self, s: Session) -> Iterator[Metric]:
        g = GaugeMetricFamily("tas_jobs", "Jobs by status", labels=["status"])
        for status, n in job_store.count_by_status(s).items():
            g.add_metric([status], n)
        yield g
        depth = dict.fromkeys(QUEUES, 0)
        depth.update(job_store.queued_by_queue(s))
        q = GaugeMetricFamily("tas_queue_depth", "Queued jobs by queue", labels=["queue"])
        for name, n in sorted(depth.items()):
            q.add_metric([name], n)
        yield q

    def _workers(self, s: Session) -> Iterator[Metric]:
        listed = workers.listed(
            s, heartbeat_s=self.settings.worker_heartbeat_s, forget_s=self.settings.worker_forget_s
        )
        running = workers.running_by_worker(s, tenant=None)
        by_state = dict.fromkeys(
            (workers.ONLINE, workers.DRAINING, workers.OFFLINE, workers.LOST), 0
        )
        for _, state in listed:
            by_state[state] = by_state.get(state, 0) + 1
        g = GaugeMetricFamily("tas_workers", "Workers by state", labels=["state"])
        for state, n in by_state.items():
            g.add_metric([state], n)
        yield g
        r = GaugeMetricFamily(
            "tas_worker_running_jobs", "Jobs running on each worker", labels=["worker"]
        )
        per = {row.id: 0 for row, state in listed if state in (workers.ONLINE, workers.DRAINING)}
        per.update(running)
        for worker, n in sorted(per.items()):
            r.add_metric([worker], n)
        yield r

    def _durations(self, s: Session, dialect: str) -> Iterator[Metric]:
        yield _histogram(
            s,
            "tas_job_duration_seconds",
            "Finished jobs: first start to finish (resumed runs included)",
            seconds_between(Job.started_at, Job.finished_at, dialect),
            [Job.status],
            [Job.finished_at.is_not(None), Job.started_at.is_not(None)],
            JOB_SECONDS,
        )
        yield _histogram(
            s,
            "tas_job_queue_wait_seconds",
            "Started jobs: submit to first start",
            seconds_between(Job.created_at, Job.started_at, dialect),
            [Job.queue],
            [Job.started_at.is_not(None)],
            WAIT_SECONDS,
        )
        yield _histogram(
            s,
            "tas_stage_duration_seconds",
            "Finished stages of every run, by stage and how it ended",
            seconds_between(JobStage.started_at, JobStage.finished_at, dialect),
            [JobStage.name, JobStage.status],
            [JobStage.finished_at.is_not(None)],
            STAGE_SECONDS,
        )

    def _training(self, s: Session) -> Iterator[Metric]:
        totals = job_store.training_totals(s)
        yield CounterMetricFamily(
            "tas_epochs_trained", "Epochs completed, over every job", value=totals.epochs
        )
        yield CounterMetricFamily(
            "tas_samples_trained",
            "Training samples seen in completed epochs, over every job",
            value=totals.samples,
        )


class LocalHistogram:
    """A histogram's buckets in a plain list: an observation is a bisect and two additions, about
    a tenth of prometheus_client's locked `observe`, which matters at /predict's request rate.
    Written by one thread at a time: latency on the event loop, a batch size by the model's one
    forward pass in flight; a scrape reads a copy."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        counts, total = list(self.counts), self.total
        cumulative, series = 0, []
        for bound, n in zip(self.bounds, counts, strict=False):
            cumulative += n
            series.append((_le(bound), float(cumulative)))
        series.append(("+Inf", float(cumulative + counts[-1])))
        family.add_metric(labels, buckets=series, sum_value=total)


@dataclass(slots=True)
class PredictObserver:
    """One model's histograms, made once per model and kept on its batcher."""

    latency: LocalHistogram
    batch: LocalHistogram


class PredictMetrics(Collector):
    """`/predict` latency (per request) and batch size (per forward pass), per model."""

    def __init__(self) -> None:
        self._models: dict[str, PredictObserver] = {}

    def bind(self, model: str) -> PredictObserver:
        obs = self._models.get(model)
        if obs is None:
            obs = self._models.setdefault(
                model,
                PredictObserver(LocalHistogram(PREDICT_SECONDS), LocalHistogram(PREDICT_BATCH)),
            )
        return obs

    def collect(self) -> Iterator[Metric]:
        latency = HistogramMetricFamily(
            "tas_predict_latency_seconds",
            "POST /predict: request read to response, per model (name:version)",
            labels=["model"],
        )
        batch = HistogramMetricFamily(
            "tas_predict_batch_size",
            "Samples per forward pass (concurrent requests gathered), per model",
            labels=["model"],
        )
        for model, obs in sorted(self._models.items()):
            obs.latency.add_to(latency, [model])
            obs.batch.add_to(batch, [model])
        yield latency
        yield batch


class Observe:
    """Request count and latency by route template. A plain ASGI middleware: Starlette's
    `@app.middleware("http")` wraps every response in streams and a task group, which cost
    /predict about a fifth of its request rate."""

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(scope["method"], path, str(status)).inc()
            self.latency.labels(scope["method"], path).observe(time.perf_counter() - start)


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    predict: PredictMetrics


def make_metrics(sessions: sessionmaker[Session], settings: Settings) -> Metrics:
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(sessions, settings))
    requests = Counter(
        "tas_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry
    )
    latency = Histogram(
        "tas_http_request_seconds", "HTTP request latency", ["method", "route"], registry=registry
    )
    predict = PredictMetrics()
    registry.register(predict)
    return Metrics(registry, requests, latency, predict)

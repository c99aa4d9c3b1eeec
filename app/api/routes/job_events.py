"""`GET /jobs/{id}/events`: a job's changes, metric rows and log lines as Server-Sent Events,
served from one shared poller (app/services/job_stream.py) so that open streams hold no database
connection, resumable with `Last-Event-ID`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, cast

import anyio
from fastapi import APIRouter, Header, Path, Query, Request
from sse_starlette.sse import EventSourceResponse
from starlette.types import Receive, Scope, Send

from app.api.deps import TenantDep, requires
from app.services.job_stream import Cursor, JobStreams, Watch
from tas.errors import InvalidInput

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[requires("jobs:read")])


class _EndOnShutdown:
    """Handed to sse-starlette as its `shutdown_event`, of which it only calls `set()` when the
    server stops: the stream then ends as if its job had (the response completed), instead of
    being cancelled mid-response, which uvicorn logs as an error for every open stream."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch

    def set(self) -> None:
        self.watch.end()


async def _until_end(watch: Watch) -> AsyncIterator[dict[str, str]]:
    """The stream's events, then `end` when (and only when) its job finished: a stream that stops
    without one was cut (shutdown, a client too far behind, the network), and its client
    reconnects with its last id. `end` carries no id: resuming after it starts from the last
    event's."""
    async for event in watch.events():
        yield event
    if watch.final_status is not None:
        yield {"event": "end", "data": json.dumps({"status": watch.final_status})}


class WatchResponse(EventSourceResponse):
    """Gives the stream's slot back however the response ends: the stream's own end, a client
    disconnect, shutdown, or an end before the stream's generator ever started (whose `finally`
    would then never run)."""

    def __init__(self, watch: Watch, **kwargs: Any) -> None:
        super().__init__(
            _until_end(watch),
            shutdown_event=cast(anyio.Event, _EndOnShutdown(watch)),
            shutdown_grace_period=2.0,
            **kwargs,
        )
        self.watch = watch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.watch.close()


def _cursor(header: str | None, query: str | None) -> Cursor | None:
    raw, loc = (
        (header, ("header", "last-event-id")) if header else (query, ("query", "last_event_id"))
    )
    if not raw:
        return None
    try:
        return Cursor.decode(raw)
    except ValueError as e:
        raise InvalidInput([(loc, f"{e}; send back an id this stream sent, or none")]) from None


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        429: {"description": "Too many open event streams; see Retry-After."},
    },
)
async def job_events(
    job_id: Annotated[str, Path(max_length=64)],
    tenant: TenantDep,
    request: Request,
    last_event_id: Annotated[
        str | None,
        Header(
            max_length=64,
            description="The `id:` of the last event received: the stream resumes after it.",
        ),
    ] = None,
    last_event_id_query: Annotated[
        str | None,
        Query(
            alias="last_event_id",
            max_length=64,
            description="As the Last-Event-ID header, for clients that cannot set one; `0`: from"
            " the job's first metric row and log line.",
        ),
    ] = None,
) -> EventSourceResponse:
    """Server-Sent Events, each with an `id:`, until the job ends:

    - `job`: the job as `GET /jobs/{id}` shows it, first and each time it changes;
    - `metric`: a metric row as `GET /jobs/{id}/metrics` shows it, as the run writes it;
    - `log`: a log line as `GET /jobs/{id}/logs` shows it;
    - `end`: the job has finished (`{"status": ...}`, after its last `job` event); the server
      then closes the stream. A stream that stops without `end` was cut: reconnect.

    A new stream sends the job, the job's whole log, and the metric rows written from then on
    (the rows before: `GET /jobs/{id}/metrics`, downsampled with `max_points`). Reconnecting
    with `Last-Event-ID` (or `?last_event_id=`) sends exactly what came after that event, to
    this API process or another: the log lines and metric rows after it, then the job if it
    changed since. Ids are decimal integers that increase within a stream; an id packs the job's
    version, the last metric row id and the last log line id sent (README, "Following a job, live").
    A client more than 10,000 rows behind is cut off and resumes from its id.

    Open streams are bounded (`TAS_MAX_EVENT_STREAMS`): beyond it, a 429 with Retry-After.

    async with no session dependency on purpose: a request-scoped session would stay checked out
    of the pool for as long as the stream is open."""
    after = _cursor(last_event_id, last_event_id_query)
    streams: JobStreams = request.app.state.job_streams
    watch = await streams.watch(job_id, tenant, after)
    return WatchResponse(watch, ping=15)

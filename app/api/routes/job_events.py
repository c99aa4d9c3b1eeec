"""`GET /jobs/{id}/events`: a job's changes as Server-Sent Events, served from one shared poller
(app/services/job_stream.py) so that open streams hold no database connection."""

from __future__ import annotations

from typing import Annotated, Any, cast

import anyio
from fastapi import APIRouter, Path, Request
from sse_starlette.sse import EventSourceResponse
from starlette.types import Receive, Scope, Send

from app.api.deps import TenantDep, requires
from app.services.job_stream import JobStreams, Watch

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[requires("jobs:read")])


class _EndOnShutdown:
    """Handed to sse-starlette as its `shutdown_event`, of which it only calls `set()` when the
    server stops: the stream then ends as if its job had (the response completed), instead of
    being cancelled mid-response, which uvicorn logs as an error for every open stream."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch

    def set(self) -> None:
        self.watch.end()


class WatchResponse(EventSourceResponse):
    """Gives the stream's slot back however the response ends: the stream's own end, a client
    disconnect, shutdown, or an end before the stream's generator ever started (whose `finally`
    would then never run)."""

    def __init__(self, watch: Watch, **kwargs: Any) -> None:
        super().__init__(
            watch.events(),
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


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        429: {"description": "Too many open event streams; see Retry-After."},
    },
)
async def job_events(
    job_id: Annotated[str, Path(max_length=64)], tenant: TenantDep, request: Request
) -> EventSourceResponse:
    """Server-Sent Events: `event: job` with the job (as `GET /jobs/{id}`) each time it changes,
    until it ends. Each event's `id:` increases within a stream. Open streams are bounded
    (`TAS_MAX_EVENT_STREAMS`): beyond it, a 429 with Retry-After.

    async with no session dependency on purpose: a request-scoped session would stay checked out
    of the pool for as long as the stream is open."""
    streams: JobStreams = request.app.state.job_streams
    watch = await streams.watch(job_id, tenant)
    return WatchResponse(watch, ping=15)

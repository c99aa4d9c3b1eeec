"""A bound on every request body but those of the routes that bound their own (TAS_MAX_JSON_BODY_KB).

FastAPI reads a route's whole body, and parses its JSON, on the event loop before it solves a
single dependency, the API key's check included: without a bound anyone who reaches the port makes
the API hold and parse as many bytes as they send (a 100 MB body to POST /jobs with no key grew
the API by ~575 MiB and stalled every other request for seconds before its 401).

What the bound refuses is refused before the work: a body whose Content-Length is over the limit
before a byte of it is read, one without (chunked) as soon as the bytes streamed in pass it, so at
most the limit is ever held. The refusal is a 413 with the API's error body, naming the limit and
its setting.

It is one pure ASGI middleware rather than FastAPI's `max_body_size`: it bounds every route by
default, a new one included, whatever it reads its body with, and its 413 says what the limit is
and which setting raises it. The routes that bound their own body (uploads, /predict, each with
its own, larger limit) are named when it is installed, by their endpoint. It decides on the first
read of the body, once the router has matched the route: nothing reads a body before that."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The setting that says how large a body may be, named in every refusal.
SETTING = "TAS_MAX_JSON_BODY_KB"


class BodyTooLarge(HTTPException):
    """An HTTPException, not one of tas' errors: FastAPI's body reader passes an HTTPException
    through to its handler as it is, and turns anything else raised while reading into a 400."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


class BodyLimit:
    """Refuses (413) a request body over `max_bytes`, on any route whose endpoint is not one of
    `own_limits`."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, own_limits: Collection[Callable[..., Any]]
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.own_limits = frozenset(own_limits)

    def refuse(self, what: str) -> BodyTooLarge:
        return BodyTooLarge(
            f"{what}; the limit is {self.max_bytes:,} bytes ({self.max_bytes / 1024:g} KiB,"
            f" {SETTING})"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = 0
        first = True
        responded = False

        async def bounded() -> Message:
            nonlocal seen, first
            # Once the answer has begun, whatever still reads is a stream waiting for the client
            # to leave (it drops any body): a 413 could no longer be sent.
            if responded or scope.get("endpoint") in self.own_limits:
                return await receive()
            if first:
                first = False
                length = Headers(scope=scope).get("content-length")
                if length is not None and length.isdigit() and int(length) > self.max_bytes:
                    raise self.refuse(f"the body is {int(length):,} bytes")
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self.refuse(
                        f"the body passed {self.max_bytes:,} bytes while streaming in"
                    )
            return message

        async def watched(message: Message) -> None:
            nonlocal responded
            if message["type"] == "http.response.start":
                responded = True
            await send(message)

        await self.app(scope, bounded, watched)

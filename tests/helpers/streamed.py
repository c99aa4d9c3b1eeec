"""A request body an ASGI app pulls piece by piece, counting what it pulled: how the tests show a
body past a limit is refused before the app read it (TestClient would read the whole body before
the app saw its first byte)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
from fastapi import FastAPI


class StreamedBody:
    """`head`, then `size` bytes of `filler` repeated, then `tail`, in `chunk`-sized pieces."""

    def __init__(
        self,
        size: int,
        *,
        head: bytes = b"",
        tail: bytes = b"",
        filler: bytes = b"0,",
        chunk: int = 64 * 1024,
    ) -> None:
        self.size, self.head, self.tail, self.filler, self.chunk = size, head, tail, filler, chunk
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._pieces():
            self.pulled += len(piece)
            yield piece

    def _pieces(self) -> Iterator[bytes]:
        yield self.head
        block = self.filler * (self.chunk // len(self.filler) + 1)
        left = self.size
        while left > 0:
            n = min(left, self.chunk)
            yield block[:n]
            left -= n
        yield self.tail


def send_streamed(
    app: FastAPI, method: str, path: str, body: StreamedBody, headers: dict[str, str]
) -> httpx.Response:
    """The request through the ASGI app, which pulls the body as it reads it."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.request(method, path, content=body, headers=headers)

    return asyncio.run(go())

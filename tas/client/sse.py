"""Server-Sent Events, read incrementally: the wire format's fields (`id:`, `event:`, `data:`,
comments, blank-line dispatch) as the HTML standard defines them, and nothing of tas.

Kept apart from the HTTP code so that the parsing can be tested line by line and the reconnecting
reader (tas/client/client.py) only decides what a dropped stream means."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    """One dispatched event. `id` is the last id the stream set (the standard carries it over to
    the following events until changed); `data` is the text of its `data:` lines joined by
    newlines."""

    event: str
    data: str
    id: str | None = None
    retry_ms: int | None = None

    def json(self) -> Any:
        """`data` as JSON (tas sends JSON in every event)."""
        return json.loads(self.data)


class SseParser:
    """Feed it lines (without their line ending); it answers an Event at each blank line that ends
    one. A partial event at the end of a stream is never dispatched: the standard drops it, and a
    stream cut mid-event must not hand on half a job."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self.retry_ms: int | None = None
        self._event = ""
        self._data: list[str] = []
        self._has_data = False

    def feed(self, line: str) -> Event | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: sse-starlette's keep-alive pings
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._has_data = True
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self.last_id = value
        elif field == "retry" and value.isdigit():
            self.retry_ms = int(value)
        # Any other field is ignored, as the standard says.
        return None

    def _dispatch(self) -> Event | None:
        event, data, has_data = self._event or "message", self._data, self._has_data
        self._event, self._data, self._has_data = "", [], False
        if not has_data:
            return None
        return Event(event=event, data="\n".join(data), id=self.last_id, retry_ms=self.retry_ms)


def parse(lines: Iterable[str]) -> Iterator[Event]:
    """The events in `lines` (each without its line ending; `\\r\\n`, `\\r` and `\\n` endings are
    all SSE's, which httpx's `iter_lines` already splits on)."""
    parser = SseParser()
    for line in lines:
        event = parser.feed(line.rstrip("\r\n"))
        if event is not None:
            yield event

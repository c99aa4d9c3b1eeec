"""Sending a huge request body to a real API process without building it, and watching what the
process pays meanwhile: its memory (RSS sampled every few ms) and how fast `/healthz` answers on a
second connection. For the tests that show a body past a limit is refused before it costs."""

from __future__ import annotations

import re
import select
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

MiB = 1 << 20
CHUNK = 256 * 1024


def rss_bytes(pid: int, key: str = "VmRSS") -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    assert m, text
    return int(m.group(1)) * 1024


@dataclass
class Watch:
    """While a body is sent: the API's RSS sampled every few ms, and /healthz asked in a loop from
    its own connection, each answer's latency kept."""

    base_url: str
    pid: int
    baseline: int = 0
    peak: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Watch:
        self.baseline = self.peak = rss_bytes(self.pid)
        self._threads = [
            threading.Thread(target=self._sample, daemon=True),
            threading.Thread(target=self._health, daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.005)

    def _health(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as c:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                r = c.get("/healthz")
                self.latencies.append(time.perf_counter() - t0)
                self.statuses.add(r.status_code)
                time.sleep(0.01)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


@dataclass
class Sent:
    status: int | None
    response: bytes
    body_bytes: int  # how much of the body the client got to send before the answer came
    reset: bool


def zeros(total: int) -> Iterator[bytes]:
    """`0,0,0,…` in CHUNK-sized pieces: a JSON array's inside, never held whole."""
    piece = b"0," * (CHUNK // 2)
    left = total
    while left > 0:
        n = min(left, CHUNK)
        yield piece[:n]
        left -= n


def send(port: int, method: str, path: str, body: Iterator[bytes], *, length: int | None) -> Sent:
    """The request over a raw socket, with no key: the head, then the body piece by piece
    (chunked transfer coding when `length` is None), stopping as soon as an answer is readable,
    as a client that reads while it writes does."""
    head = [
        f"{method} {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked",
        "",
        "",
    ]
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sent, reset, response = 0, False, b""
    try:
        sock.sendall("\r\n".join(head).encode())
        for chunk in body:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer came: stop sending
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if length is None else chunk)
            sent += len(chunk)
        else:
            if length is None:
                sock.sendall(b"0\r\n\r\n")
        sock.settimeout(30)
        while b"\r\n\r\n" not in response or len(response) < _expected(response):
            data = sock.recv(65536)
            if not data:
                break
            response += data
    except (ConnectionResetError, BrokenPipeError):
        reset = True
        response += _read_what_is_left(sock)
    finally:
        sock.close()
    m = re.match(rb"HTTP/1\.1 (\d{3})", response)
    return Sent(int(m.group(1)) if m else None, response, sent, reset)


def _expected(response: bytes) -> int:
    head, _, _ = response.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
    return len(head) + 4 + int(m.group(1)) if m else len(response)


def _read_what_is_left(sock: socket.socket) -> bytes:
    """After a reset the answer may still sit in the receive buffer."""
    out = b""
    try:
        sock.settimeout(2)
        while data := sock.recv(65536):
            out += data
    except OSError:
        pass
    return out


def report(what: str, sent: Sent, watch: Watch) -> str:
    lat = sorted(watch.latencies) or [float("nan")]
    return (
        f"{what}: status {sent.status}, {sent.body_bytes / MiB:.1f} MiB sent before the answer,"
        f" reset={sent.reset}; API RSS +{watch.growth / MiB:.1f} MiB (from"
        f" {watch.baseline / MiB:.0f} MiB); /healthz ×{len(watch.latencies)}: median"
        f" {statistics.median(lat) * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms"
    )


def check_refused(sent: Sent, watch: Watch, what: str, setting: bytes) -> str:
    """The API's own 413 naming `setting` (not a dropped connection: the client must learn which
    limit it hit), the API grown by under 100 MB and /healthz answering in under 100 ms."""
    text = report(what, sent, watch)
    print(text)
    assert sent.status == 413 and not sent.reset, text
    assert setting in sent.response, sent.response
    assert watch.growth < 100 * MiB, text
    assert watch.latencies and watch.statuses == {200}, text
    assert max(watch.latencies) < 0.100, text
    return text

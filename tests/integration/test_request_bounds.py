"""A /predict body too large to serve costs the API almost nothing, in a real `tas serve --no-worker`
process: a 250 MB body announced by its Content-Length is refused before it is read, and a chunked
one (no Content-Length) once the bytes streamed in pass the limit (32 MiB by default) — the API's
memory grows by under 100 MB meanwhile, and `/healthz`, asked over and over from a second
connection while the body is being sent, answers each time in under 100 ms.

The body is sent over a raw socket from a generator (nothing is built in memory), and the client
stops sending as soon as the answer arrives, as a client that reads while it writes does. A server
that dropped the connection instead would show up as a reset with no answer: a failure, since the
client would not learn which limit it hit."""

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
import pytest

from tests.helpers.servers import free_port
from tests.helpers.stack import Stack, base_env, spawn, wait_http

pytestmark = [pytest.mark.integration]

MiB = 1 << 20
LIMIT = 32 * MiB  # TAS_PREDICT_MAX_BODY_MB's default
BIG = 250 * 1000 * 1000
CHUNK = 256 * 1024


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, int]]:
    """(base URL, port, the API process's pid) of `tas serve --no-worker` with default limits."""
    tmp: Path = tmp_path_factory.mktemp("request-bounds")
    port = free_port()
    env = base_env(tmp / "var", TAS_ACCESS_LOG="false")
    stack = Stack("embedded", f"http://127.0.0.1:{port}", env, tmp / "var", tmp)
    serve = spawn("serve", ["serve", "--no-worker", "--port", str(port)], env, tmp)
    stack.procs.append(serve)
    try:
        wait_http(stack, serve)
        yield stack.base_url, port, serve.popen.pid
    finally:
        stack.close()


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


def send(port: int, body: Iterator[bytes], *, length: int | None) -> Sent:
    """POST /predict over a raw socket: the head, then the body chunk by chunk (chunked transfer
    coding when `length` is None), stopping as soon as an answer is readable."""
    head = [
        "POST /predict HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked",
        "",
        "",
    ]
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sent, reset = 0, False
    try:
        sock.sendall("\r\n".join(head).encode())
        for chunk in body:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer came: stop sending
            if length is None:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                sock.sendall(chunk)
            sent += len(chunk)
        else:
            if length is None:
                sock.sendall(b"0\r\n\r\n")
        response = b""
        sock.settimeout(30)
        while b"\r\n\r\n" not in response or len(response) < _expected(response):
            data = sock.recv(65536)
            if not data:
                break
            response += data
    except (ConnectionResetError, BrokenPipeError):
        reset, response = True, b""
        with_answer = _read_what_is_left(sock)
        response = with_answer
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


def _report(what: str, sent: Sent, watch: Watch) -> str:
    lat = sorted(watch.latencies)
    return (
        f"{what}: status {sent.status}, {sent.body_bytes / MiB:.1f} MiB sent before the answer,"
        f" reset={sent.reset}; API RSS +{watch.growth / MiB:.1f} MiB (from"
        f" {watch.baseline / MiB:.0f} MiB); /healthz ×{len(lat)}: median"
        f" {statistics.median(lat) * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms"
    )


def _check(sent: Sent, watch: Watch, what: str) -> None:
    report = _report(what, sent, watch)
    print(report)
    # the API's answer, not a dropped connection: the client is told which limit and setting
    assert sent.status == 413, report
    assert b"TAS_PREDICT_MAX_BODY_MB" in sent.response, sent.response
    assert watch.growth < 100 * MiB, report
    assert watch.latencies and watch.statuses == {200}, report
    assert max(watch.latencies) < 0.100, report


def test_a_250_mb_body_announced_by_its_length_is_refused_unread(
    api: tuple[str, int, int],
) -> None:
    base_url, port, pid = api
    with Watch(base_url, pid) as watch:
        time.sleep(0.3)  # a few /healthz answers before the body, as a baseline
        sent = send(port, zeros(BIG), length=BIG)
        time.sleep(0.1)
    _check(sent, watch, "Content-Length 250 MB")
    # refused on its head: the client had sent no more than what the sockets buffer
    assert sent.body_bytes < LIMIT, _report("Content-Length", sent, watch)


def test_a_chunked_body_is_refused_once_past_the_limit(api: tuple[str, int, int]) -> None:
    base_url, port, pid = api
    with Watch(base_url, pid) as watch:
        time.sleep(0.3)
        sent = send(port, zeros(BIG), length=None)
        time.sleep(0.1)
    _check(sent, watch, "chunked 250 MB")
    # read up to the limit, not to the end: what the client sent is the limit and socket buffers
    assert LIMIT <= sent.body_bytes < LIMIT + 32 * MiB, _report("chunked", sent, watch)

"""A body too large for a route without a limit of its own costs the API almost nothing, in a real
`tas serve --no-worker` that has an API key (so every route but the public ones needs one) and a
caller that sends none: a 100 MB body to POST /jobs announced by its Content-Length is refused
before it is read, and a chunked one once the bytes streamed in pass TAS_MAX_JSON_BODY_KB (1 MiB by
default) — a 413 naming the setting, not the 401 that comes only after the body has been read, with
the API's memory growing by under 100 MB and `/healthz`, asked over and over from a second
connection meanwhile, answering each time in under 100 ms. Every other route with a JSON body
refuses its 100 MB Content-Length the same way.

The body is sent over a raw socket from a generator (nothing is built in memory), and the client
stops sending as soon as the answer arrives, as a client that reads while it writes does. The
answer must be the 413 itself: a server that dropped the connection instead fails here."""

from __future__ import annotations

import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers.servers import free_port
from tests.helpers.stack import Stack, base_env, spawn, wait_http
from tests.integration.test_request_bounds import Watch, zeros

pytestmark = [pytest.mark.integration]

MiB = 1 << 20
LIMIT = 1 * MiB  # TAS_MAX_JSON_BODY_KB's default
BIG = 100 * 1000 * 1000
SETTING = b"TAS_MAX_JSON_BODY_KB"
KEY_ARGS = ("--tenant", "team-a", "--scopes", "jobs:read,jobs:write")
#: Every route with a JSON body; the ids name nothing (the body is refused before any lookup).
ROUTES = [
    ("POST", "/jobs"),
    ("PATCH", "/jobs/" + "0" * 32),
    ("POST", "/jobs/" + "0" * 32 + "/resume"),
    ("POST", "/jobs/" + "0" * 32 + "/clone"),
    ("POST", "/searches"),
    ("PUT", "/models/no-such-model/aliases/production"),
    ("POST", "/keys"),
]


@dataclass(frozen=True)
class Api:
    base_url: str
    port: int
    pid: int


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """`tas serve --no-worker` with default limits and one API key: no route but the public ones
    answers a caller without a key."""
    tmp: Path = tmp_path_factory.mktemp("json-body-limit")
    port = free_port()
    env = base_env(tmp / "var", TAS_ACCESS_LOG="false", TAS_AUTH_CACHE_S="0")
    stack = Stack("embedded", f"http://127.0.0.1:{port}", env, tmp / "var", tmp)
    serve = spawn("serve", ["serve", "--no-worker", "--port", str(port)], env, tmp)
    stack.procs.append(serve)
    try:
        wait_http(stack, serve)
        made = subprocess.run(
            [sys.executable, "-m", "tas", "keys", "create", *KEY_ARGS],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip().splitlines()[-1]
        keyless = httpx.post(stack.base_url + "/jobs", json={}, timeout=10)
        assert keyless.status_code == 401, keyless.text  # the server is keyed
        keyed = httpx.get(
            stack.base_url + "/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
        assert keyed.status_code == 200, keyed.text
        yield Api(stack.base_url, port, serve.popen.pid)
    finally:
        stack.close()


@dataclass
class Sent:
    status: int | None
    response: bytes
    body_bytes: int  # how much of the body the client got to send before the answer came
    reset: bool


def send(api: Api, method: str, path: str, body: Iterator[bytes], *, length: int | None) -> Sent:
    """The request over a raw socket, with no key: the head, then the body piece by piece
    (chunked transfer coding when `length` is None), stopping as soon as an answer is readable."""
    head = [
        f"{method} {path} HTTP/1.1",
        f"Host: 127.0.0.1:{api.port}",
        "Content-Type: application/json",
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked",
        "",
        "",
    ]
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=60)
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
    finally:
        sock.close()
    m = re.match(rb"HTTP/1\.1 (\d{3})", response)
    return Sent(int(m.group(1)) if m else None, response, sent, reset)


def _expected(response: bytes) -> int:
    head, _, _ = response.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
    return len(head) + 4 + int(m.group(1)) if m else len(response)


def _report(what: str, sent: Sent, watch: Watch) -> str:
    lat = sorted(watch.latencies) or [float("nan")]
    return (
        f"{what}: status {sent.status}, {sent.body_bytes / MiB:.1f} MiB sent before the answer,"
        f" reset={sent.reset}; API RSS +{watch.growth / MiB:.1f} MiB (from"
        f" {watch.baseline / MiB:.0f} MiB); /healthz x{len(watch.latencies)}: median"
        f" {lat[len(lat) // 2] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms"
    )


def _check(sent: Sent, watch: Watch, what: str) -> str:
    report = _report(what, sent, watch)
    print(report)
    assert sent.status == 413 and not sent.reset, report
    assert SETTING in sent.response, sent.response
    assert watch.growth < 100 * MiB, report
    assert watch.latencies and watch.statuses == {200}, report
    assert max(watch.latencies) < 0.100, report
    return report


HEAD, TAIL = b'{"name": [', b"0]}"
#: The body's length: valid JSON, a list of 50 M zeros, which a server that read and parsed it
#: would hold as a Python list (hundreds of MB), not only as bytes.
LENGTH = len(HEAD) + BIG + len(TAIL)


def big_json() -> Iterator[bytes]:
    yield HEAD
    yield from zeros(BIG)
    yield TAIL


def watched(api: Api, method: str, path: str, *, length: int | None) -> tuple[Sent, Watch]:
    with Watch(api.base_url, api.pid) as watch:
        time.sleep(0.3)  # a few /healthz answers before the body, as a baseline
        sent = send(api, method, path, big_json(), length=length)
        time.sleep(0.1)
    return sent, watch


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_a_100_mb_body_announced_by_its_length_is_refused_unread(
    api: Api, method: str, path: str
) -> None:
    sent, watch = watched(api, method, path, length=LENGTH)
    report = _check(sent, watch, f"{method} {path}, Content-Length 100 MB, no key")
    assert f"the body is {LENGTH:,} bytes".encode() in sent.response, sent.response
    # refused on its head: the client sent no more than the sockets buffer
    assert sent.body_bytes < 16 * MiB, report


def test_a_chunked_body_is_refused_once_past_the_limit(api: Api) -> None:
    sent, watch = watched(api, "POST", "/jobs", length=None)
    report = _check(sent, watch, "POST /jobs, chunked 100 MB, no key")
    assert b"while streaming in" in sent.response, sent.response
    # read up to the limit, not to the end: what the client sent is the limit and socket buffers
    assert LIMIT <= sent.body_bytes < LIMIT + 32 * MiB, report

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

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.raw_http import MiB, Sent, Watch, check_refused, report, send, zeros
from tests.helpers.servers import free_port
from tests.helpers.stack import Stack, base_env, spawn, wait_http

pytestmark = [pytest.mark.integration]

LIMIT = 32 * MiB  # TAS_PREDICT_MAX_BODY_MB's default
BIG = 250 * 1000 * 1000


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


def _check(sent: Sent, watch: Watch, what: str) -> None:
    check_refused(sent, watch, what, b"TAS_PREDICT_MAX_BODY_MB")


def test_a_250_mb_body_announced_by_its_length_is_refused_unread(
    api: tuple[str, int, int],
) -> None:
    base_url, port, pid = api
    with Watch(base_url, pid) as watch:
        time.sleep(0.3)  # a few /healthz answers before the body, as a baseline
        sent = send(port, "POST", "/predict", zeros(BIG), length=BIG)
        time.sleep(0.1)
    _check(sent, watch, "Content-Length 250 MB")
    # refused on its head: the client had sent no more than what the sockets buffer
    assert sent.body_bytes < LIMIT, report("Content-Length", sent, watch)


def test_a_chunked_body_is_refused_once_past_the_limit(api: tuple[str, int, int]) -> None:
    base_url, port, pid = api
    with Watch(base_url, pid) as watch:
        time.sleep(0.3)
        sent = send(port, "POST", "/predict", zeros(BIG), length=None)
        time.sleep(0.1)
    _check(sent, watch, "chunked 250 MB")
    # read up to the limit, not to the end: what the client sent is the limit and socket buffers
    assert LIMIT <= sent.body_bytes < LIMIT + 32 * MiB, report("chunked", sent, watch)

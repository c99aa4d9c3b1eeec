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

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers.raw_http import MiB, Sent, Watch, check_refused, send, zeros
from tests.helpers.servers import free_port
from tests.helpers.stack import Stack, base_env, spawn, wait_http

pytestmark = [pytest.mark.integration]

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


def _check(sent: Sent, watch: Watch, what: str) -> str:
    return check_refused(sent, watch, what, SETTING)


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
        sent = send(api.port, method, path, big_json(), length=length)
        time.sleep(0.1)
    return sent, watch


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_a_100_mb_body_announced_by_its_length_is_refused_unread(
    api: Api, method: str, path: str
) -> None:
    sent, watch = watched(api, method, path, length=LENGTH)
    text = _check(sent, watch, f"{method} {path}, Content-Length 100 MB, no key")
    assert f"the body is {LENGTH:,} bytes".encode() in sent.response, sent.response
    # refused on its head: the client sent no more than the sockets buffer
    assert sent.body_bytes < 16 * MiB, text


def test_a_chunked_body_is_refused_once_past_the_limit(api: Api) -> None:
    sent, watch = watched(api, "POST", "/jobs", length=None)
    text = _check(sent, watch, "POST /jobs, chunked 100 MB, no key")
    assert b"while streaming in" in sent.response, sent.response
    # read up to the limit, not to the end: what the client sent is the limit and socket buffers
    assert LIMIT <= sent.body_bytes < LIMIT + 32 * MiB, text

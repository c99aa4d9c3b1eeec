"""The client against a scripted server (httpx's MockTransport): what it sends, how it reads the
API's errors and pages, and, above all, how `events()` treats a stream that drops: it reconnects
with Last-Event-ID after a back-off and ends only when the job has finished."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tas.client import (
    ApiError,
    Client,
    ConnectionFailed,
    JobCancelled,
    JobFailed,
    Retry,
    WaitTimeout,
)


def job_json(status: str = "running", **extra: Any) -> dict[str, Any]:
    return {
        "id": "j1",
        "name": "iris",
        "status": status,
        "stage": "train",
        "queue": "cpu",
        "progress": {"epoch": 1, "epochs": 3, "step": 2, "steps_per_epoch": 8, "fraction": 0.4},
        "latest_metrics": {"loss": 0.5},
        "best_metrics": None,
        "result": None,
        "error": None,
        "attempts": 1,
        "max_attempts": 3,
        "cancel_requested": False,
        "created_at": "2026-12-02T02:00:00Z",
        "started_at": "2026-12-02T02:00:01Z",
        "finished_at": None,
        "updated_at": "2026-12-02T02:00:02Z",
        "spec": {"checkpoint": {"monitor": "val_accuracy"}},
        "stages": [],
        "tags": {},
        **extra,
    }


def sse(event_id: int | None, data: dict[str, Any], event: str = "job") -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class Cut(httpx.SyncByteStream):
    """A response body that sends its chunks and then, if `drop`, loses the connection."""

    def __init__(self, *chunks: bytes, drop: bool = True) -> None:
        self.chunks = chunks
        self.drop = drop

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.drop:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


Handler = Callable[[httpx.Request], httpx.Response]


class Server:
    """Answers each request with the next scripted response for its path."""

    def __init__(self, script: dict[str, list[httpx.Response | Exception]]) -> None:
        self.script = script
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.script[request.url.path].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def event_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith("/events")]


def stream(*chunks: bytes, drop: bool = False) -> httpx.Response:
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=Cut(*chunks, drop=drop)
    )


def make(server: Server, sleeps: list[float], **kw: Any) -> Client:
    return Client(
        "http://tas.test",
        api_key="tas_k",
        transport=httpx.MockTransport(server),
        sleep=sleeps.append,
        **kw,
    )


def test_a_dropped_stream_reconnects_with_last_event_id_and_skips_what_it_saw() -> None:
    server = Server(
        {
            "/jobs/j1": [httpx.Response(200, json=job_json())] * 2,
            "/jobs/j1/events": [
                # Cut mid-event: the half event is never handed on.
                stream(sse(100, job_json()), b'id: 150\nevent: job\ndata: {"id"', drop=True),
                # A server that ignores Last-Event-ID starts with the state already seen.
                stream(sse(100, job_json()), sse(200, job_json("succeeded")), drop=False),
            ],
        }
    )
    sleeps: list[float] = []
    client = make(server, sleeps)
    job = client.jobs.get("j1")
    events = list(job.events())
    assert [(e.event, e.id) for e in events] == [("job", "100"), ("job", "200")]
    assert job.status == "succeeded"  # updated in place
    first, second = server.event_requests()
    assert "last-event-id" not in first.headers
    assert second.headers["last-event-id"] == "100"
    assert first.headers["authorization"] == "Bearer tas_k"
    assert sleeps == [0.5]


def test_a_stream_that_ends_early_is_not_the_end_until_the_job_says_so() -> None:
    """The server closes the stream (a restart, say) with the job running: the reader reconnects;
    when the job has finished meanwhile and its last event was missed, the job read says so and
    is handed on as a last `job` event."""
    server = Server(
        {
            "/jobs/j1": [
                httpx.Response(200, json=job_json()),  # get
                httpx.Response(200, json=job_json()),  # after the first clean end: running
                httpx.Response(200, json=job_json("failed", error={"type": "E", "message": "m"})),
            ],
            "/jobs/j1/events": [
                stream(sse(1, job_json())),
                httpx.ConnectError("connection refused"),
            ],
        }
    )
    sleeps: list[float] = []
    job = make(server, sleeps).jobs.get("j1")
    events = list(job.events())
    assert [(e.event, e.id) for e in events] == [("job", "1"), ("job", None)]
    assert events[-1].json()["status"] == "failed"
    assert job.status == "failed" and job.error is not None and job.error.type == "E"
    # A back-off per try, growing while no event arrives.
    assert sleeps == [0.5, 1.0]


def test_the_back_off_grows_and_gives_up_after_the_retries() -> None:
    server = Server(
        {
            "/jobs/j1": [httpx.Response(200, json=job_json())]
            + [httpx.ConnectError("refused")] * 10,
            "/jobs/j1/events": [httpx.ConnectError("refused")] * 10,
        }
    )
    sleeps: list[float] = []
    job = make(server, sleeps, retry=Retry(attempts=4, initial_s=0.5, max_s=2.0)).jobs.get("j1")
    with pytest.raises(ConnectionFailed, match="dropped 4 times"):
        list(job.events())
    assert sleeps == [0.5, 1.0, 2.0, 2.0]


def test_too_many_streams_waits_as_retry_after_says() -> None:
    server = Server(
        {
            "/jobs/j1": [httpx.Response(200, json=job_json())] * 2,
            "/jobs/j1/events": [
                httpx.Response(429, headers={"retry-after": "3"}, json={"detail": "busy"}),
                stream(sse(5, job_json("cancelled"))),
            ],
        }
    )
    sleeps: list[float] = []
    job = make(server, sleeps).jobs.get("j1")
    assert [e.id for e in job.events()] == ["5"]
    assert sleeps == [3.0]


def test_an_unknown_job_is_an_api_error_not_a_retry() -> None:
    server = Server(
        {"/jobs/nope/events": [httpx.Response(404, json={"detail": "job nope not found"})]}
    )
    client = make(server, [])
    from tas.client import Job

    job = Job.of(job_json(id="nope"), client.jobs)
    with pytest.raises(ApiError) as caught:
        list(job.events())
    assert (caught.value.status, caught.value.message) == (404, "job nope not found")


def test_other_events_pass_through_and_ids_are_compared_per_kind() -> None:
    """A log line numbered 3 after a job event numbered 1000 is new: each kind numbers its own."""
    server = Server(
        {
            "/jobs/j1": [httpx.Response(200, json=job_json())],
            "/jobs/j1/events": [
                stream(
                    sse(1000, job_json()),
                    sse(3, {"id": 3, "message": "epoch 1"}, event="log"),
                    sse(2000, job_json("succeeded")),
                )
            ],
        }
    )
    job = make(server, []).jobs.get("j1")
    assert [(e.event, e.id) for e in job.events()] == [
        ("job", "1000"),
        ("log", "3"),
        ("job", "2000"),
    ]


def test_api_errors_carry_the_status_and_the_apis_detail() -> None:
    problems = [
        {"loc": ["body", "training", "lr"], "msg": "must be > 0", "type": "greater_than"},
        {"loc": ["body", "name"], "msg": "too long", "type": "x"},
    ]
    server = Server({"/jobs": [httpx.Response(422, json={"detail": problems})]})
    with pytest.raises(ApiError) as caught:
        make(server, []).jobs.submit({"name": "x"})
    e = caught.value
    assert e.status == 422 and e.detail == problems
    assert e.message == "training.lr: must be > 0; name: too long"
    assert "POST /jobs: 422" in str(e)


def test_url_and_key_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=job_json())

    monkeypatch.setenv("TAS_URL", "http://remote.test:9000/")
    monkeypatch.setenv("TAS_API_KEY", "tas_env")
    client = Client(transport=httpx.MockTransport(handler))
    assert client.url == "http://remote.test:9000"
    client.jobs.get("j1")
    assert str(seen[0].url) == "http://remote.test:9000/jobs/j1"
    assert seen[0].headers["authorization"] == "Bearer tas_env"
    monkeypatch.delenv("TAS_URL")
    monkeypatch.delenv("TAS_API_KEY")
    bare = Client(transport=httpx.MockTransport(handler))
    assert bare.url == "http://127.0.0.1:8000"
    bare.jobs.get("j1")
    assert "authorization" not in seen[1].headers


def test_list_follows_the_cursor_and_stops_at_the_limit() -> None:
    pages = [
        {"items": [job_json(id="a"), job_json(id="b")], "next_cursor": "c1"},
        {"items": [job_json(id="c"), job_json(id="d")], "next_cursor": "c2"},
    ]
    server = Server({"/jobs": [httpx.Response(200, json=p) for p in pages]})
    jobs = list(make(server, []).jobs.list(status=["running", "queued"], limit=3, page_size=2))
    assert [j.id for j in jobs] == ["a", "b", "c"]
    first, second = server.requests
    assert first.url.params.get_list("status") == ["running", "queued"]
    assert "cursor" not in first.url.params and second.url.params["cursor"] == "c1"
    assert "sort" not in first.url.params  # the server's default order


def test_list_passes_the_sort_on_every_page() -> None:
    pages = [
        {"items": [job_json(id="a")], "next_cursor": "c1"},
        {"items": [job_json(id="b")], "next_cursor": None},
    ]
    server = Server({"/jobs": [httpx.Response(200, json=p) for p in pages]})
    jobs = list(make(server, []).jobs.list(sort="-duration", page_size=1))
    assert [j.id for j in jobs] == ["a", "b"]
    assert [r.url.params["sort"] for r in server.requests] == ["-duration", "-duration"]


def test_wait_raises_with_the_jobs_error_or_its_cancellation() -> None:
    failed = job_json("failed", error={"type": "NonFiniteLoss", "message": "nan", "hint": "lr"})
    server = Server(
        {
            "/jobs/j1": [
                httpx.Response(200, json=job_json()),
                httpx.ConnectError("blip"),  # a restart is ridden out
                httpx.Response(200, json=failed),
            ]
        }
    )
    sleeps: list[float] = []
    job = make(server, sleeps).jobs.get("j1")
    with pytest.raises(JobFailed) as caught:
        job.wait(poll_s=0.25)
    assert caught.value.error is not None and caught.value.error.type == "NonFiniteLoss"
    assert caught.value.job is job and job.status == "failed"
    assert sleeps == [0.5]

    server = Server({"/jobs/j1": [httpx.Response(200, json=job_json("cancelled"))]})
    with pytest.raises(JobCancelled):
        make(server, []).jobs.wait(job)


def test_wait_times_out_and_the_job_runs_on() -> None:
    server = Server({"/jobs/j1": [httpx.Response(200, json=job_json())] * 100})
    job = make(server, [], retry=Retry()).jobs.get("j1")
    with pytest.raises(WaitTimeout, match="still running"):
        job.wait(timeout=0.0)


def test_typed_job_fields() -> None:
    server = Server(
        {
            "/jobs/j1": [
                httpx.Response(
                    200,
                    json=job_json("succeeded", result={"model": {"name": "iris", "version": 2}}),
                )
            ]
        }
    )
    job = make(server, []).jobs.get("j1")
    assert job.model == ("iris", 2)
    assert job.monitor == "val_accuracy"
    assert job.progress is not None and job.progress.steps_per_epoch == 8
    assert job.created_at is not None and job.created_at.tzinfo is not None


def test_the_servers_end_event_ends_the_stream_even_when_the_last_job_event_was_missed() -> None:
    """A resumed stream whose job finished meanwhile may bring only `end`: the job is read."""
    server = Server(
        {
            "/jobs/j1": [
                httpx.Response(200, json=job_json()),
                httpx.Response(200, json=job_json("succeeded")),
            ],
            "/jobs/j1/events": [
                stream(sse(1, job_json()), b'event: end\ndata: {"status": "succeeded"}\n\n')
            ],
        }
    )
    sleeps: list[float] = []
    job = make(server, sleeps).jobs.get("j1")
    assert [e.event for e in job.events()] == ["job", "end"]
    assert job.status == "succeeded" and sleeps == []

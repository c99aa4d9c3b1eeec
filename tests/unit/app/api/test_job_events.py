"""Event streams in process on a real SQLite database: the event format, the shared poller (one
query per interval for every watcher), the bound on open streams, and that nothing is left held
(slots, pool connections, the poller) once the streams end."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, insert, update
from sqlalchemy.orm import Session, sessionmaker

from app.services.job_stream import READ_THREADS, Cursor, JobStreams, Snapshot, Watch
from tas.errors import JobNotFound, TooManyRequests
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.orm import Job, JobLog, JobStatus, MetricRow

SPEC: dict[str, Any] = {
    "name": "t",
    "dataset": {"name": "iris"},
    "model": {"arch": "mlp", "hidden": [8]},
    "training": {"epochs": 1, "batch_size": 16, "optimizer": "adam", "lr": 0.01},
}


def parse_events(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
        )
        if fields:
            events.append(fields)
    return events


def test_finished_job_streams_one_event_as_get_job_shows_it(client: TestClient) -> None:
    job = client.post("/jobs", json=SPEC).json()
    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 200
    r = client.get(f"/jobs/{job['id']}/events")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = parse_events(r.text)
    assert [e["event"] for e in events] == ["job", "end"]  # `end`: finished, not cut
    assert int(events[0]["id"]) > 0
    assert json.loads(events[0]["data"]) == client.get(f"/jobs/{job['id']}").json()


def test_unknown_job_gives_its_slot_back(client: TestClient) -> None:
    streams: JobStreams = client.app.state.job_streams  # type: ignore[attr-defined]
    assert client.get("/jobs/nope/events").status_code == 404
    assert streams.open_streams == 0


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.resolved_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


def new_job(sessions: sessionmaker[Session], tenant: str = "default") -> str:
    with sessions() as s:
        job = job_store.create_job(s, SPEC, tenant=tenant, max_attempts=3)
        s.commit()
        return job.id


def set_progress(sessions: sessionmaker[Session], job_id: str, epoch: int) -> None:
    with sessions() as s:
        progress = {"epoch": epoch, "epochs": 9, "step": 0, "steps_per_epoch": 1, "fraction": 0.1}
        s.execute(update(Job).where(Job.id == job_id).values(progress=progress, status="running"))
        s.commit()


def finish(sessions: sessionmaker[Session], job_id: str) -> None:
    with sessions() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.cancelled.value))
        s.commit()


async def collect(watch: Watch) -> list[dict[str, str]]:
    return [e async for e in watch.events()]


async def next_event(events: AsyncIterator[dict[str, str]]) -> dict[str, Any]:
    e = await asyncio.wait_for(anext(events), timeout=5)
    return {**e, "job": json.loads(e["data"])}


def test_every_watcher_sees_each_change_then_the_end(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    job_id = new_job(sessions)

    async def run() -> None:
        hub = JobStreams(sessions, max_streams=10, interval_s=0.05)
        watches = [await hub.watch(job_id, "default") for _ in range(3)]
        streams = [w.events() for w in watches]
        firsts = [await next_event(s) for s in streams]
        assert {f["job"]["status"] for f in firsts} == {"queued"}
        assert hub.open_streams == 3 and hub.watched_jobs == 1

        await asyncio.to_thread(set_progress, sessions, job_id, 4)
        seconds = [await next_event(s) for s in streams]
        for first, second in zip(firsts, seconds, strict=True):
            assert second["event"] == "job"
            assert second["job"]["progress"]["epoch"] == 4
            assert int(second["id"]) > int(first["id"])

        await asyncio.to_thread(finish, sessions, job_id)
        for s in streams:
            last = await next_event(s)
            assert last["job"]["status"] == "cancelled"
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(anext(s), timeout=5)

        assert hub.open_streams == 0 and hub.watched_jobs == 0
        for _ in range(100):  # the poller notices within one interval that nobody watches
            if not hub.polling:
                break
            await asyncio.sleep(0.02)
        assert not hub.polling
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        # and a new stream starts a new poller
        job2 = await asyncio.to_thread(new_job, sessions)
        w = await hub.watch(job2, "default")
        assert hub.polling
        w.close()
        await hub.aclose()

    asyncio.run(run())


def test_one_query_per_interval_whatever_the_number_of_streams(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    job_ids = [new_job(sessions) for _ in range(3)]
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM jobs" in statement:  # reads of the jobs themselves
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)

    async def run() -> None:
        hub = JobStreams(sessions, max_streams=100, interval_s=0.05)
        watches = [await hub.watch(job_ids[i % 3], "default") for i in range(30)]
        await asyncio.sleep(0.6)
        await hub.aclose()
        assert hub.polls >= 3
        # the first stream on each job reads it; the other 27 start from the poller's snapshot;
        # then one statement per poll for all 30 streams on 3 jobs (+ a poll cut short by aclose)
        assert 3 + hub.polls <= len(statements) <= 3 + hub.polls + 1, statements
        for w in watches:
            w.close()

    asyncio.run(run())


def test_streams_hold_no_pooled_connection_while_they_wait(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    job_id = new_job(sessions)

    async def run() -> None:
        hub = JobStreams(sessions, max_streams=100, interval_s=30)  # one poll, then a long wait
        watches = [await hub.watch(job_id, "default") for _ in range(20)]
        for _ in range(100):
            if hub.polls:
                break
            await asyncio.sleep(0.02)
        assert hub.polls == 1
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        for w in watches:
            w.close()
        await hub.aclose()
        assert not hub.polling

    asyncio.run(run())


def test_bound_is_a_429_with_retry_after_and_slots_come_back(
    sessions: sessionmaker[Session],
) -> None:
    job_id = new_job(sessions)

    async def run() -> None:
        hub = JobStreams(sessions, max_streams=3, interval_s=0.05)
        watches = [await hub.watch(job_id, "default") for _ in range(3)]
        with pytest.raises(TooManyRequests) as refused:
            await hub.watch(job_id, "default")
        assert refused.value.status_code == 429
        assert refused.value.headers is not None and int(refused.value.headers["Retry-After"]) > 0
        assert "TAS_MAX_EVENT_STREAMS=3" in refused.value.message
        assert hub.open_streams == 3
        watches.pop().close()
        watches.append(await hub.watch(job_id, "default"))  # a freed slot is taken again
        for w in watches:
            w.close()
            w.close()  # twice (the stream's end and the response's end): counted once
        assert hub.open_streams == 0 and hub.watched_jobs == 0
        await hub.aclose()

    asyncio.run(run())


def test_per_tenant_bound_and_unknown_or_foreign_jobs(sessions: sessionmaker[Session]) -> None:
    mine, theirs = new_job(sessions, "a"), new_job(sessions, "b")

    async def run() -> None:
        hub = JobStreams(sessions, max_streams=10, max_per_tenant=2, interval_s=0.05)
        watches = [await hub.watch(mine, "a") for _ in range(2)]
        with pytest.raises(TooManyRequests, match="TAS_MAX_EVENT_STREAMS_PER_TENANT=2"):
            await hub.watch(mine, "a")
        watches.append(await hub.watch(theirs, "b"))  # another tenant still gets a stream
        for job_id in ("nope", theirs):
            with pytest.raises(JobNotFound):  # another tenant's job is as unknown
                await hub.watch(job_id, "c")
        assert hub.open_streams == 3  # the refused and the not-found ones hold no slot
        for w in watches:
            w.close()
        assert hub.open_streams == 0
        await hub.aclose()

    asyncio.run(run())


def test_shutdown_ends_open_streams(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)

    async def run() -> None:
        hub = JobStreams(sessions, max_streams=10, interval_s=0.05)
        watch = await hub.watch(job_id, "default")
        task = asyncio.create_task(collect(watch))
        await asyncio.sleep(0.1)
        await hub.aclose()
        events = await asyncio.wait_for(task, timeout=5)
        assert [e["event"] for e in events] == ["job"]
        assert hub.open_streams == 0 and not hub.polling

    asyncio.run(run())


def test_a_burst_of_new_streams_uses_at_most_read_threads(sessions: sessionmaker[Session]) -> None:
    """Streams opening on 20 different jobs at once: their reads queue behind each other, holding
    no more than READ_THREADS worker threads (and pooled connections) at any moment."""
    job_ids = [new_job(sessions) for _ in range(20)]

    class Counting(JobStreams):
        active = peak = 0
        lock = threading.Lock()

        def _read_many(self, ids: Sequence[str], tenant: str | None = None) -> dict[str, Snapshot]:
            with self.lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            try:
                time.sleep(0.01)
                return super()._read_many(ids, tenant)
            finally:
                with self.lock:
                    self.active -= 1

    async def run() -> None:
        hub = Counting(sessions, max_streams=100, interval_s=0.05)
        watches = await asyncio.gather(*(hub.watch(j, "default") for j in job_ids))
        assert hub.open_streams == 20 and hub.watched_jobs == 20
        assert hub.peak == READ_THREADS
        for w in watches:
            w.close()
        await hub.aclose()

    asyncio.run(run())


# --- event ids: metric rows and log lines on the stream, resumable with Last-Event-ID ---------


def write_rows(
    sessions: sessionmaker[Session], job_id: str, steps: Sequence[int], lines: Sequence[str]
) -> None:
    """Step rows and log lines, as a run writes them (each in its own transaction, in order)."""
    with sessions() as s:
        if steps:
            s.execute(
                insert(MetricRow),
                [
                    {"job_id": job_id, "epoch": 1, "step": st, "values": {"train_loss": 1 / st}}
                    for st in steps
                ],
            )
        if lines:
            s.execute(
                insert(JobLog),
                [{"job_id": job_id, "source": "train", "message": m, "attempt": 1} for m in lines],
            )
        s.commit()


def test_a_finished_jobs_stream_ends_with_end_after_its_last_job_event(client: TestClient) -> None:
    job = client.post("/jobs", json=SPEC).json()
    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 200
    events = parse_events(client.get(f"/jobs/{job['id']}/events").text)
    assert [e["event"] for e in events] == ["job", "end"]
    assert json.loads(events[-1]["data"]) == {"status": "cancelled"}
    assert "id" not in events[-1]  # resuming after `end` starts from the last event's id


def test_resuming_from_any_event_sends_exactly_the_rest(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    """Cut after each event in turn and reconnect with its id (header or query): what follows is
    the uninterrupted stream's tail, no gap, no repeat."""
    job_id = client.post("/jobs", json=SPEC).json()["id"]
    write_rows(sessions, job_id, [10, 20], ["one", "two"])
    write_rows(sessions, job_id, [30], ["three"])
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200

    whole = parse_events(client.get(f"/jobs/{job_id}/events?last_event_id=0").text)
    kinds = [e["event"] for e in whole]
    assert kinds == ["log"] * 3 + ["metric"] * 3 + ["job", "end"]
    assert [json.loads(e["data"])["message"] for e in whole[:3]] == ["one", "two", "three"]
    assert [json.loads(e["data"]) for e in whole[3:6]] == [
        {"train_loss": 1 / st, "epoch": 1, "step": st} for st in (10, 20, 30)
    ]
    ids = [int(e["id"]) for e in whole[:-1]]
    assert ids == sorted(set(ids))  # strictly increasing

    for k, cut in enumerate(whole[:-1]):
        use_header = k % 2 == 0
        r = client.get(
            f"/jobs/{job_id}/events",
            headers={"Last-Event-ID": cut["id"]} if use_header else {},
            params={} if use_header else {"last_event_id": cut["id"]},
        )
        assert parse_events(r.text) == whole[k + 1 :], k

    # a new stream: the job's whole log, no metric row written before it, then the job
    fresh = parse_events(client.get(f"/jobs/{job_id}/events").text)
    assert [e["event"] for e in fresh] == ["log"] * 3 + ["job", "end"]


@pytest.mark.parametrize("bad", ["x", "-1", "1.5", "9" * 41, "١٢"])
def test_an_id_the_stream_never_sent_is_a_422(client: TestClient, bad: str) -> None:
    job_id = client.post("/jobs", json=SPEC).json()["id"]
    streams: JobStreams = client.app.state.job_streams  # type: ignore[attr-defined]
    r = client.get(f"/jobs/{job_id}/events", params={"last_event_id": bad})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", "last_event_id"]
    assert streams.open_streams == 0


def test_a_stream_cut_mid_job_resumes_on_another_process_without_gap_or_repeat(
    sessions: sessionmaker[Session],
) -> None:
    """Two hubs stand for two API processes. One client reads a running job's stream whole;
    another is cut after a few events and reconnects, to the other hub, with its last id. The
    rows and lines both receive are the same, each once, and both end with the same job."""
    job_id = new_job(sessions)
    set_progress(sessions, job_id, 1)

    async def writer() -> None:
        for batch in range(6):
            steps = [100 * batch + i for i in range(1, 8)]
            await asyncio.to_thread(
                write_rows, sessions, job_id, steps, [f"batch {batch} line {i}" for i in range(3)]
            )
            await asyncio.to_thread(set_progress, sessions, job_id, batch + 2)
            await asyncio.sleep(0.03)
        await asyncio.to_thread(finish, sessions, job_id)

    def rows_of(events: list[dict[str, str]]) -> dict[str, list[str]]:
        """Each kind's events in order (a poll sends its lines before its rows, a catch-up all
        lines then all rows: the order across kinds depends on where the cut fell)."""
        return {
            kind: [e["data"] for e in events if e["event"] == kind] for kind in ("log", "metric")
        }

    async def run() -> None:
        one = JobStreams(sessions, max_streams=10, interval_s=0.02)
        two = JobStreams(sessions, max_streams=10, interval_s=0.02)
        whole_task = asyncio.create_task(collect(await one.watch(job_id, "default")))
        cut = await one.watch(job_id, "default")
        write_task = asyncio.create_task(writer())
        first_part: list[dict[str, str]] = []
        stream = cut.events()
        while len(first_part) < 9:
            first_part.append(await asyncio.wait_for(anext(stream), timeout=5))
        await stream.aclose()  # the connection drops
        assert one.open_streams == 1
        await asyncio.sleep(0.05)  # more is written while the client is away
        last_id = Cursor.decode(first_part[-1]["id"])
        resumed = await two.watch(job_id, "default", last_id)
        second_part = await asyncio.wait_for(collect(resumed), timeout=10)
        whole = await asyncio.wait_for(whole_task, timeout=10)
        await write_task

        union = first_part + second_part
        assert rows_of(union) == rows_of(whole)  # the same rows, in order, each once
        assert [len(v) for v in rows_of(whole).values()] == [6 * 3, 6 * 7]
        ids = [int(e["id"]) for e in union]
        assert ids == sorted(set(ids))
        assert union[-1]["event"] == whole[-1]["event"] == "job"
        assert json.loads(union[-1]["data"])["status"] == "cancelled"
        assert resumed.final_status == "cancelled"
        await one.aclose()
        await two.aclose()

    asyncio.run(run())


def test_a_reader_too_far_behind_is_cut_off_without_end(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.services import job_stream

    monkeypatch.setattr(job_stream, "MAX_PENDING_ROWS", 5)
    job_id = new_job(sessions)

    async def run() -> None:
        hub = JobStreams(sessions, max_streams=10, interval_s=0.02)
        watch = await hub.watch(job_id, "default")
        stream = watch.events()
        first = await asyncio.wait_for(anext(stream), timeout=5)
        assert first["event"] == "job"
        await asyncio.to_thread(write_rows, sessions, job_id, list(range(1, 21)), [])
        await asyncio.to_thread(finish, sessions, job_id)
        rest = [e async for e in stream]  # not read while the rows piled up
        assert len(rest) < 21 and watch.final_status is None  # cut: no end
        resumed = await hub.watch(job_id, "default", Cursor.decode((rest or [first])[-1]["id"]))
        tail = await asyncio.wait_for(collect(resumed), timeout=5)
        steps = [json.loads(e["data"])["step"] for e in rest + tail if e["event"] == "metric"]
        assert steps == list(range(1, 21))
        assert resumed.final_status == "cancelled"
        await hub.aclose()

    asyncio.run(run())

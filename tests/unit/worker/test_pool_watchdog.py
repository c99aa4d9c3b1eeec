"""The threaded pool's start watchdog (worker/pool.py), on a real billiard pool with real children:
one job per child, as the worker runs them, and a one-second bound. Each test makes a child stall
at one point of its start and checks that the job still runs (or is handed back) and that the
stalled child no longer holds the pool's slot."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from billiard.einfo import ExceptionInfo
from celery.worker.state import reserved_requests, task_reserved
from kombu.message import Message

from tas.queue import RUN_JOB, TasCelery
from tas.settings import Settings
from tests.helpers.lifecycle import _alive
from worker.gate import JobRequest
from worker.pool import RUNNING, WAITING, JobNotStarted, _BlockingPool, _BlockingWorker

BOUND_S = 1.0


def _hang_once(marker: str) -> None:
    """A child initializer that hangs in the first child only (as one that inherited a held lock
    would); the children after it start normally."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    time.sleep(3600)


def _touch(path: str) -> int:
    Path(path).write_text("ran")
    return os.getpid()


def _sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@contextmanager
def pool(cls: type[_BlockingPool] = _BlockingPool, **kwargs: Any) -> Iterator[_BlockingPool]:
    p = cls(1, maxtasksperchild=1, start_timeout_s=BOUND_S, **kwargs)
    try:
        yield p
    finally:
        # Children first (a stopped one ignores the pool's SIGTERM), then the locks one of them
        # may have died holding, which the pool's own teardown takes and would wait on for ever:
        # the job queue's read lock (a child stopped mid-read) and the result queue's write lock
        # (a child killed here while it sent its exit notice, as each does after its one job).
        p.close()
        for w in list(p._pool):
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGKILL)
            w.join(5)
        for lock in (p._inqueue._rlock, p._outqueue._wlock):
            lock.acquire(False)
            lock.release()
        p.terminate()


def until(what: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}")


def failure(result: Any, timeout: float = 15.0) -> BaseException:
    """The exception a job ended with (billiard wraps it with its traceback)."""
    result.wait(timeout)
    assert result.ready() and not result.successful()
    exc = result._value.exception
    return getattr(exc, "exc", exc)  # type: ignore[no-any-return]


def only_child(p: _BlockingPool) -> Any:
    return until(lambda: p._pool[0] if len(p._pool) == 1 and p._pool[0].pid else None)


def test_a_child_stuck_while_starting_is_replaced_and_the_job_runs(tmp_path: Path) -> None:
    with pool(initializer=_hang_once, initargs=(str(tmp_path / "hung"),)) as p:
        stuck = only_child(p).pid
        until(lambda: (tmp_path / "hung").exists())
        t0 = time.monotonic()
        result = p.apply_async(_touch, (str(tmp_path / "ran"),))
        ran_in = result.get(timeout=15)
        assert ran_in != stuck
        assert BOUND_S * 0.5 < time.monotonic() - t0 < BOUND_S + 8
        until(lambda: not _alive(stuck))


class _StallAfterReceive(_BlockingWorker):
    """The first child takes its job from the queue and then never starts it."""

    marker = ""

    def _make_child_methods(self, *args: Any, **kwargs: Any) -> None:
        super()._make_child_methods(*args, **kwargs)
        receive = self.wait_for_job

        def wait_for_job() -> Any:
            req = receive()
            if req and not os.path.exists(self.marker):
                Path(self.marker).write_text("stalled")
                time.sleep(3600)
            return req

        self.wait_for_job = wait_for_job


def test_a_job_taken_but_never_started_goes_back_and_the_slot_is_freed(tmp_path: Path) -> None:
    class Stalling(_BlockingPool):
        ChildWorker = type("W", (_StallAfterReceive,), {"marker": str(tmp_path / "stalled")})

    with pool(Stalling) as p:
        stalled = only_child(p).pid
        result = p.apply_async(_touch, (str(tmp_path / "first"),))
        exc = failure(result)
        assert isinstance(exc, JobNotStarted) and "took it but never started it" in str(exc)
        assert (tmp_path / "stalled").exists()
        assert not (tmp_path / "first").exists()
        until(lambda: not _alive(stalled))
        assert not p._cache  # nothing left waiting in the pool for it
        # the slot is free: the next job runs in a fresh child
        assert p.apply_async(_touch, (str(tmp_path / "second"),)).get(timeout=15) != stalled
        assert (tmp_path / "second").exists()


def test_a_wedged_queue_is_freed_and_the_job_runs_in_a_fresh_child(tmp_path: Path) -> None:
    """The child waiting on the shared queue is stopped while it holds the queue's read lock (as
    one stopped, or killed, mid-read would): the job would wait behind it for ever."""
    with pool() as p:
        child = only_child(p)
        until(lambda: p.slots.get(child.index).phase == WAITING)
        time.sleep(0.2)  # inside its read, holding the lock
        os.kill(child.pid, signal.SIGSTOP)
        result = p.apply_async(_touch, (str(tmp_path / "ran"),))
        assert result.get(timeout=15) != child.pid
        assert (tmp_path / "ran").exists()
        until(lambda: not _alive(child.pid))
        # the queue works again for the job after it
        assert p.apply_async(_touch, (str(tmp_path / "next"),)).get(timeout=15)


def test_a_job_no_free_child_takes_goes_back_and_is_never_started_later(tmp_path: Path) -> None:
    """Every child busy with another job past the bound: the waiting job is handed back, and
    the child that later finds it in the queue skips it (the broker has it again)."""
    with pool() as p:
        busy = p.apply_async(_sleep, (BOUND_S * 3,))
        until(lambda: p.slots.get(p._pool[0].index).phase == RUNNING)
        waiting = p.apply_async(_touch, (str(tmp_path / "stale"),))
        exc = failure(waiting)
        assert isinstance(exc, JobNotStarted) and "every pool child was busy" in str(exc)
        busy.get(timeout=15)
        # the next child reads the handed-back job from the queue, skips it, and waits
        p.apply_async(_touch, (str(tmp_path / "after"),)).get(timeout=15)
        assert (tmp_path / "after").exists()
        assert not (tmp_path / "stale").exists()


def test_the_request_of_a_job_handed_back_rejects_its_message_with_requeue(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the pool's hand-back does on the Celery side: the `tas.run_job` request rejects its
    message with requeue (back to the broker, as for a lost worker), is no longer reserved, and
    the worker's log says which job and why."""
    app = TasCelery(Settings(data_dir=tmp_path))

    def run(self: Any, job_id: str) -> None:
        raise AssertionError("never run here")

    task = app.task(
        name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True, Request=JobRequest
    )(run)
    sent = app.amqp.as_task_v2("task-1", RUN_JOB, args=["job-1"])
    message = Message(
        body=json.dumps(sent.body),
        headers=sent.headers,
        content_type="application/json",
        content_encoding="utf-8",
        delivery_info={"routing_key": "default", "exchange": ""},
    )
    settled: list[tuple[str, bool]] = []
    request = JobRequest(
        message,
        on_ack=lambda *a: settled.append(("ack", False)),
        on_reject=lambda _log, _errors, requeue: settled.append(("reject", requeue)),
        app=app,
        task=task,
    )
    task_reserved(request)
    try:
        raise JobNotStarted("no pool child started it within 30 s: every pool child was busy")
    except JobNotStarted:
        with caplog.at_level(logging.WARNING, logger="worker.gate"):
            request.on_failure(ExceptionInfo())
    assert settled == [("reject", True)]
    assert request not in reserved_requests
    assert "job job-1: no pool child started it within 30 s" in caplog.text

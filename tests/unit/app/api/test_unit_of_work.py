"""A request is one unit of work: the session dependency commits when the route returns and rolls
back when it raises, and what waits for the commit (a job's message, a job's files going) happens
only after a commit that succeeded."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.types import Message, Receive, Scope, Send

from app.main import create_app
from app.services import workers as worker_service
from tas.settings import Settings
from tas.store.jobs import job_dir
from tas.store.orm import Job
from tests.helpers.api import RecordingPublisher
from tests.helpers.specs import iris_spec


def jobs_in_db(app: FastAPI) -> int:
    """Counted through a read-only session: it sees only committed rows, and waits for no lock."""
    with app.state.readers() as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def test_the_commit_and_the_publish_come_before_the_response_starts(
    settings: Settings, published: RecordingPublisher
) -> None:
    """FastAPI ends a `yield` dependency after the response is sent unless its scope is
    "function": the first byte of a 201 must find the row committed and its message sent."""
    app = create_app(settings, reaper=False)
    app.state.publisher = published
    at_start: list[tuple[int, int]] = []

    async def watched(scope: Scope, receive: Receive, send: Send) -> None:
        async def spy(message: Message) -> None:
            if message["type"] == "http.response.start" and scope["method"] == "POST":
                at_start.append((jobs_in_db(app), len(published.published)))
            await send(message)

        await app(scope, receive, spy)

    with TestClient(watched) as client:
        assert client.post("/jobs", json=iris_spec()).status_code == 201
    assert at_start == [(1, 1)]


def test_a_failure_after_the_row_is_added_publishes_nothing_and_keeps_no_row(
    client: TestClient, published: RecordingPublisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /jobs adds (and flushes) the row and queues its message, then a later step fails."""

    def fails(*_args: object) -> None:
        raise RuntimeError("a step after the job's row was added")

    monkeypatch.setattr(worker_service, "warn_if_unservable", fails)
    r = client.post("/jobs", json=iris_spec())
    assert r.status_code == 500
    assert published.published == []
    assert jobs_in_db(client.app) == 0  # type: ignore[arg-type]
    assert client.get("/jobs").json()["items"] == []


def test_a_failed_commit_answers_500_and_removes_nothing(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DELETE /jobs/{id} queues the removal of the job's directory for after the commit: a commit
    that fails leaves the row and the files."""
    job_id = client.post("/jobs", json=iris_spec()).json()["id"]
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    files = job_dir(settings.resolved_artifact_dir, job_id, tenant="default")
    files.mkdir(parents=True)

    def refused(self: Session) -> None:
        raise RuntimeError("the database refused the commit")

    with monkeypatch.context() as m:
        m.setattr(Session, "commit", refused)
        assert client.delete(f"/jobs/{job_id}").status_code == 500
    assert files.is_dir()
    assert client.get(f"/jobs/{job_id}").status_code == 200
    assert client.delete(f"/jobs/{job_id}").status_code == 204
    assert not files.exists()

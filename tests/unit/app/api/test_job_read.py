"""GET /jobs/{id} reads plain rows on a kept connection (`job_store.job_view`), not ORM objects:
its JSON must be, byte for byte, what JobOut makes of the ORM job, in every state."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Connection, update
from sqlalchemy.exc import OperationalError

from app.schemas.jobs import job_json
from app.services import workers as worker_service
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store.orm import Job, JobStage, utcnow
from tas.store.unit_of_work import unit_of_work
from tests.helpers.specs import iris_spec


def orm_json(app: FastAPI, settings: Settings, job_id: str) -> bytes:
    with unit_of_work(app.state.readers) as s:
        job = job_store.get_job(s, job_id, tenant="default")
        worker_service.annotate(s, [job], settings)
        return job_json(job)


def test_the_json_is_the_orm_jobs(app: FastAPI, client: TestClient, settings: Settings) -> None:
    queued = client.post("/jobs", json=iris_spec(tags={"team": "a"})).json()["id"]
    done = client.post("/jobs", json=iris_spec(name="done")).json()["id"]
    t0 = utcnow() - timedelta(minutes=5)
    with unit_of_work(app.state.sessions) as s:
        s.execute(
            update(Job)
            .where(Job.id == done)
            .values(
                status="failed",
                stage="train",
                started_at=t0,
                finished_at=t0 + timedelta(seconds=90),
                error={"type": "Diverged", "message": "loss is nan", "stage": "train"},
                progress={
                    "epoch": 1,
                    "epochs": 2,
                    "step": 3,
                    "steps_per_epoch": 9,
                    "fraction": 0.3,
                },
                latest_metrics={"epoch": 1, "loss": 0.5},
                attempt_log=[{"run": 1, "owner": "w/1/x", "outcome": "failed", "extra": 1}],
                attempts=1,
                tags=None,
            )
        )
        for n, name in enumerate(("train", "collect", "preprocess")):
            s.add(
                JobStage(
                    job_id=done,
                    attempt=1 + n // 2,
                    name=name,
                    status="succeeded",
                    started_at=t0 + timedelta(seconds=n),
                    outputs={"rows": 150} if n == 1 else None,
                )
            )
    for job_id in (queued, done):
        r = client.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        assert r.content == orm_json(app, settings, job_id)
    body = client.get(f"/jobs/{queued}").json()
    assert body["waiting_for"]["queue"] == "default", "no worker: the queued job says so"
    assert [st["name"] for st in client.get(f"/jobs/{done}").json()["stages"]] == [
        "train",
        "collect",
        "preprocess",
    ]


def test_an_unknown_job_is_a_404_and_the_next_read_still_works(client: TestClient) -> None:
    job_id = client.post("/jobs", json=iris_spec()).json()["id"]
    for _ in range(3):
        missing = client.get("/jobs/" + "0" * 32)
        assert missing.status_code == 404, missing.text
        assert client.get(f"/jobs/{job_id}").status_code == 200
    assert client.get("/jobs/" + "x" * 65).status_code == 422


def test_a_read_that_finds_the_file_locked_is_retried_patiently(
    app: FastAPI, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite GET /jobs/{id} reads on the event loop with a reader that gives up at once on a
    locked file; the request must then be answered from the patient reader, not fail."""
    job_id = client.post("/jobs", json=iris_spec()).json()["id"]
    kept = app.state.kept_readers
    assert kept.inline
    used: list[str] = []

    @contextlib.contextmanager
    def locked() -> Iterator[Connection]:
        used.append("inline")
        raise OperationalError("SELECT", {}, sqlite3.OperationalError("database is locked"))
        yield  # pragma: no cover

    patient = kept.patient

    @contextlib.contextmanager
    def counted() -> Iterator[Connection]:
        used.append("patient")
        with patient() as conn:
            yield conn

    monkeypatch.setattr(kept, "transaction", locked)
    monkeypatch.setattr(kept, "patient", counted)
    r = client.get(f"/jobs/{job_id}")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == job_id
    assert used == ["inline", "patient"]

"""The app in process for unit tests: migrated settings under a temp dir, a publisher that records
instead of talking to a broker, and a TestClient over `create_app`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.main import create_app
from tas.settings import Settings
from tas.store.migrate import upgrade


class RecordingPublisher:
    """Unit tests only: records what the API would publish instead of talking to a broker."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []

    def publish(self, job_id: str, queue: str) -> bool:
        self.published.append((job_id, queue))
        return True


def migrated_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings whose data dir is `tmp_path/var`, its directories made and its database migrated."""
    s = Settings(data_dir=tmp_path / "var", **overrides)
    s.ensure_dirs()
    upgrade(s.resolved_database_url)
    return s


def make_app(settings: Settings, publisher: RecordingPublisher | None = None) -> FastAPI:
    """The app without its reaper (a unit test drives the clock itself); with `publisher`, what it
    publishes is recorded there."""
    app = create_app(settings, reaper=False)
    if publisher is not None:
        app.state.publisher = publisher
    return app


@contextmanager
def running_client(app: FastAPI) -> Iterator[TestClient]:
    """A TestClient with the app's lifespan run; server errors come back as 500s, as to a caller."""
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
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


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path / "var")
    s.ensure_dirs()
    upgrade(s.resolved_database_url)
    return s


@pytest.fixture
def published() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def client(settings: Settings, published: RecordingPublisher) -> Iterator[TestClient]:
    app = create_app(settings, reaper=False)
    app.state.publisher = published
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c

"""The API in process with a publisher that records (tests/helpers/api.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tas.settings import Settings
from tests.helpers.api import RecordingPublisher, make_app, migrated_settings, running_client


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(tmp_path)


@pytest.fixture
def published() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def client(settings: Settings, published: RecordingPublisher) -> Iterator[TestClient]:
    with running_client(make_app(settings, published)) as c:
        yield c

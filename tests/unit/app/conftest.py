"""The app in process (tests/helpers/api.py): migrated settings under the test's temp dir, a
publisher that records, and models registered like a succeeded job's (tests/helpers/registry.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tas.settings import Settings
from tests.helpers.api import RecordingPublisher, make_app, migrated_settings, running_client
from tests.helpers.registry import Registry


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Small /predict bounds, so that a test reaches them with a few samples (65 is a 413)."""
    return migrated_settings(tmp_path, predict_max_samples=64, predict_max_wait_ms=2.0)


@pytest.fixture
def published() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def app(settings: Settings, published: RecordingPublisher) -> FastAPI:
    return make_app(settings, published)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with running_client(app) as c:
        yield c


@pytest.fixture
def registry(settings: Settings) -> Registry:
    return Registry(settings)

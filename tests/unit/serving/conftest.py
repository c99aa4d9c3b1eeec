"""Serving tests run the real app in process against tiny models registered like a succeeded job's
(tests/helpers/registry.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tas.settings import Settings
from tests.helpers.api import make_app, migrated_settings, running_client
from tests.helpers.registry import Registry


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(tmp_path, predict_max_samples=64, predict_max_wait_ms=2.0)


@pytest.fixture
def registry(settings: Settings) -> Registry:
    return Registry(settings)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return make_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with running_client(app) as c:
        yield c

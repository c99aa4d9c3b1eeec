"""Fixtures of the worker's unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tas.settings import Settings
from tas.store.migrate import upgrade


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A migrated embedded database under tmp_path, on the CPU, with a fast heartbeat: the runner
    tests read what the reporter wrote within a fraction of a second."""
    s = Settings(data_dir=tmp_path / "var", device="cpu", heartbeat_seconds=0.2)
    s.ensure_dirs()
    upgrade(s.resolved_database_url)
    return s

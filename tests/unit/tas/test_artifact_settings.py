"""The artifact store's settings: its URL, and this machine's cache of it (TAS_CACHE_DIR)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tas.core.objstore import LocalStore, open_store
from tas.settings import Settings


def test_defaults_keep_todays_local_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TAS_ARTIFACT_URL", "TAS_CACHE_DIR", "TAS_OBJECT_CACHE_MAX_MB"):
        monkeypatch.delenv(name, raising=False)
    s = Settings(data_dir=tmp_path)
    assert s.resolved_artifact_url == str(s.resolved_artifact_dir)
    store = open_store(s.resolved_artifact_url)
    assert isinstance(store, LocalStore) and store.root == s.resolved_artifact_dir
    assert s.object_cache_dir == (tmp_path / "cache" / "objects").resolve()
    assert s.object_cache_max_mb == 10_240
    # The preprocessed-tensor cache keeps its place.
    assert s.cache_dir == s.resolved_artifact_dir / "cache"


def test_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAS_ARTIFACT_URL", "s3://bucket/tas")
    monkeypatch.setenv("TAS_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("TAS_OBJECT_CACHE_MAX_MB", "64")
    s = Settings(data_dir=tmp_path)
    assert s.resolved_artifact_url == "s3://bucket/tas"
    assert s.object_cache_dir == tmp_path / "c" / "objects"
    assert s.object_cache_max_mb == 64
    # By field name too (tests, the embedded set-up).
    assert Settings(local_cache_dir=tmp_path / "d").object_cache_dir == tmp_path / "d" / "objects"

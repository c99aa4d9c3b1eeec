"""The artifact store as the settings name it: the local artifact directory by default, read in
place; one store and cache per process and configuration."""

from __future__ import annotations

from pathlib import Path

from tas.core.objstore import LocalStore
from tas.settings import Settings
from tas.store.artifacts import open_artifacts


def test_the_default_is_the_local_artifact_directory(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, artifact_url=None, local_cache_dir=tmp_path / "c")
    found = open_artifacts(settings)
    assert found.remote is False
    assert isinstance(found.store, LocalStore)
    found.store.put_bytes("jobs/x/a.bin", b"abc")
    assert (settings.resolved_artifact_dir / "jobs/x/a.bin").read_bytes() == b"abc"
    assert found.cache.root == tmp_path / "c" / "objects"
    assert open_artifacts(settings) is found


def test_a_store_url_is_remote_and_opened_apart(tmp_path: Path) -> None:
    local = Settings(data_dir=tmp_path, artifact_url=None)
    other = Settings(data_dir=tmp_path, artifact_url=f"file://{tmp_path / 'bucket'}")
    found = open_artifacts(other)
    assert found.remote is True
    assert found is not open_artifacts(local)
    found.store.put_bytes("k", b"1")
    assert (tmp_path / "bucket" / "k").read_bytes() == b"1"

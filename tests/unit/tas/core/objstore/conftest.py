"""Every artifact-store test runs twice: on a local directory and on a real S3-protocol server
(moto's, in a subprocess, one bucket per test), through the same `open_store` URL dispatch the
service uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from tas.core.objstore import ObjectStore, open_store
from tas.core.objstore.remote import FsspecStore
from tests.helpers.s3 import S3Server, bucket_url


@pytest.fixture(params=["local", "s3"])
def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The URL of an empty store: a local directory, or a new bucket on the S3 server."""
    if request.param == "local":
        return str(tmp_path / "store")
    return bucket_url(request.getfixturevalue("s3"), monkeypatch.setenv, "artifacts")


@pytest.fixture
def store(store_url: str) -> ObjectStore:
    return open_store(store_url)


@pytest.fixture
def s3_store(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> FsspecStore:
    """An empty store on the S3 server only (for what only S3 has: multipart uploads)."""
    store = open_store(bucket_url(s3, monkeypatch.setenv, "artifacts"))
    assert isinstance(store, FsspecStore)
    return store

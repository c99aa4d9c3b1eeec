"""Fixtures shared by every test. Server helpers live in tests/helpers/servers.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# The helpers assert too (a refused upload, a model file that must exist): rewritten like a test
# module's asserts, a failure shows the values. Registered before the first import of them.
pytest.register_assert_rewrite("tests.helpers")

from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from tas.settings import Settings  # noqa: E402
from tas.store.engine import make_engine, make_sessionmaker  # noqa: E402
from tests.helpers import servers  # noqa: E402
from tests.helpers.s3 import S3Server, bucket_url, s3_server  # noqa: E402


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.RedisServer]:
    """A private redis-server (no persistence, noeviction) for the whole session."""
    if servers.redis_binary() is None:
        servers.missing("redis-server", "apt-get install redis-server")
    server = servers.start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_url(redis_server: servers.RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    if redis_server.proc is None:  # a fault test stopped it without restarting
        redis_server.start()
    import redis

    with redis.Redis.from_url(redis_server.url) as r:
        r.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.PostgresServer]:
    """A private PostgreSQL cluster with a database ``tas`` (``.url``), for the whole session."""
    if servers.postgres_bindir() is None:
        servers.missing("PostgreSQL (initdb, pg_ctl)", "apt-get install postgresql")
    server = servers.start_postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres_url(postgres_server: servers.PostgresServer) -> Iterator[str]:
    """A fresh, empty database for this test module (dropped after it); its SQLAlchemy URL."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url.rsplit("/", 1)[1])


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """moto's S3 server (in a subprocess) for the whole session; each test takes its own bucket."""
    with s3_server() as server:
        yield server


@pytest.fixture(params=["file", "s3"])
def remote_store_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A TAS_ARTIFACT_URL that makes the artifact store remote: a `file://` directory (remote
    without S3), or a new bucket on the S3 server with the AWS environment pointing at it."""
    if request.param == "file":
        return f"file://{tmp_path / 'bucket'}"
    return bucket_url(request.getfixturevalue("s3"), monkeypatch.setenv, "tas")


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions on the database of the test module's own `settings` fixture."""
    engine = make_engine(settings.resolved_database_url)
    yield make_sessionmaker(engine)
    engine.dispose()

"""Fixtures shared by every test. Server helpers live in tests/helpers/servers.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# The helpers assert too (a refused upload, a model file that must exist): rewritten like a test
# module's asserts, a failure shows the values. Registered before the first import of them.
pytest.register_assert_rewrite("tests.helpers")

from tests.helpers import servers  # noqa: E402


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

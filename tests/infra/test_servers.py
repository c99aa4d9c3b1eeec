"""The server fixtures give real, private, working servers."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from tests.helpers import servers


def test_free_port_is_bindable() -> None:
    port = servers.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_redis_fixture_answers(redis_url: str, redis_server: servers.RedisServer) -> None:
    assert redis_url.startswith("redis://127.0.0.1:")
    assert redis_server.port != 6379  # never the system service
    with redis.Redis.from_url(redis_url) as r:
        assert r.ping() is True
        r.set("tas:k", "v")
        assert r.get("tas:k") == b"v"
        assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert r.config_get("appendonly")["appendonly"] == "no"
        assert r.config_get("save")["save"] == ""


def test_redis_url_fixture_starts_empty(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as r:
        assert r.dbsize() == 0


def test_redis_restart_and_kill(tmp_path: Path) -> None:
    if servers.redis_binary() is None:
        servers.missing("redis-server", "apt-get install redis-server")
    server = servers.start_redis(tmp_path)
    try:
        with redis.Redis.from_url(server.url) as r:
            r.set("k", "1")
        server.restart(empty=False)
        with redis.Redis.from_url(server.url) as r:
            assert r.get("k") == b"1"
        server.restart(empty=True)
        with redis.Redis.from_url(server.url) as r:
            assert r.get("k") is None
        port = server.port
        server.kill()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        server.kill()


def test_postgres_fixture_answers(postgres_server: servers.PostgresServer) -> None:
    assert postgres_server.url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    assert postgres_server.url.endswith("/tas")
    engine = sa.create_engine(postgres_server.url)
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
            assert conn.execute(sa.text("SELECT current_database()")).scalar_one() == "tas"
            conn.execute(sa.text("CREATE TABLE IF NOT EXISTS infra_probe (id int PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO infra_probe VALUES (1) ON CONFLICT DO NOTHING"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM infra_probe")).scalar_one() == 1
    finally:
        engine.dispose()


def test_postgres_module_database_is_fresh(postgres_url: str) -> None:
    assert not postgres_url.endswith("/tas")
    engine = sa.create_engine(postgres_url)
    try:
        meta = sa.MetaData()
        t = sa.Table("things", meta, sa.Column("id", sa.Integer, primary_key=True))
        assert sa.inspect(engine).get_table_names() == []
        meta.create_all(engine)
        with engine.begin() as conn:
            conn.execute(t.insert().values(id=7))
            assert conn.execute(sa.select(t.c.id)).scalar_one() == 7
    finally:
        engine.dispose()


def test_missing_service_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(servers.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="redis-server is required"):
        servers.missing("redis-server", "apt-get install redis-server")
    monkeypatch.setenv(servers.REQUIRE_ENV, "")
    with pytest.raises(pytest.skip.Exception):
        servers.missing("redis-server", "apt-get install redis-server")


def test_postgres_create_and_drop_database(postgres_server: servers.PostgresServer) -> None:
    url = postgres_server.create_database()
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()
    postgres_server.drop_database(url.rsplit("/", 1)[1])
    engine = sa.create_engine(url)
    try:
        with pytest.raises(sa.exc.OperationalError, match="does not exist"):
            engine.connect()
    finally:
        engine.dispose()

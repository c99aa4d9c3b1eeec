from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.servers import PostgresServer, RedisServer
from tests.helpers.stack import Stack, distributed_stack, embedded_stack


@pytest.fixture(scope="module", params=["embedded", "redis_pg"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The whole service on each stack: the same tests run against both."""
    tmp = tmp_path_factory.mktemp(f"stack-{request.param}")
    if request.param == "embedded":
        with embedded_stack(tmp) as s:
            yield s
    else:
        redis: RedisServer = request.getfixturevalue("redis_server")
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        with distributed_stack(tmp, database_url=pg.create_database(), broker_url=redis.url) as s:
            yield s

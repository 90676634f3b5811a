"""Real servers started by the fixtures, on 127.0.0.1 only: redis-server, the Temporal dev
server. The server classes are the runtime's own (``coreason_runtime.scale._servers``), the ones
``coreason cluster up`` starts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from coreason_runtime.scale._servers import (
    RedisServer,
    TemporalDevServer,
    free_port,
    wait_for_port,
)

__all__ = ["RedisServer", "TemporalDevServer", "free_port", "wait_for_port"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the whole session; tests flush what they use."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session's Redis, flushed before each test."""
    import redis

    if not redis_server.running:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    """A real Temporal dev server for the session."""
    server = TemporalDevServer(tmp_path_factory.mktemp("temporal"))
    server.start()
    yield server
    server.stop()

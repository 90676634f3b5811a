"""Wiring into the Coordinator: SQLite by default, Redis-with-fallback when configured."""

from __future__ import annotations

from pathlib import Path

import pytest
import sympy
from coreason_runtime import Coordinator, EventType
from coreason_runtime.cache import FallbackStore, SQLiteStore, SubgoalCache

from tests._fixtures.servers import RedisServer


def test_for_runtime_uses_sqlite_in_coreason_home(home: Path) -> None:
    with Coordinator(home=home) as rt:
        cache = SubgoalCache.for_runtime(rt)
        assert isinstance(cache.store, SQLiteStore)
        assert cache.store.path == home / "cache.sqlite"
        cache.solve("diff(x**2, x)", workflow_id="w")
        assert rt.bus.history([EventType.CACHE_ADMIT])


@pytest.mark.redis
def test_a_runtime_cache_keeps_answering_when_redis_goes_away_mid_run(
    home: Path, redis_server: RedisServer, redis_url: str
) -> None:
    with Coordinator(home=home, redis_url=redis_url) as rt:
        cache = SubgoalCache.for_runtime(rt)
        assert isinstance(cache.store, FallbackStore)
        cache.solve("integrate(x*exp(x), x)", workflow_id="w1")
        redis_server.stop()
        try:
            got = cache.solve("integrate(y*exp(y), y)", workflow_id="w2")
            assert (
                sympy.simplify(
                    sympy.diff(got, sympy.Symbol("y"))
                    - sympy.Symbol("y") * sympy.exp(sympy.Symbol("y"))
                )
                == 0
            )
            assert cache.store.degraded
        finally:
            redis_server.start()

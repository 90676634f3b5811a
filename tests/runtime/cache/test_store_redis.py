"""The Redis store against a real redis-server, and falling back when it goes away."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from coreason_runtime._exceptions import CacheBackendError
from coreason_runtime.cache import Entry, FallbackStore, RedisStore, SQLiteStore

from tests._fixtures.servers import RedisServer

pytestmark = pytest.mark.redis


def _entry(key: str, result: str = "r", workflow: str = "w1") -> Entry:
    return Entry(
        key=key,
        kind="expr",
        artifact={"result": result, "steps": [], "code": ""},
        verifier="v",
        verifier_hash="h",
        text=f"text-{key}",
        workflows=[workflow],
    )


def test_put_then_get_round_trips_empty_lists_and_strings(redis_url: str) -> None:
    store = RedisStore(redis_url)
    store.put(_entry("k"))
    got = store.get("k")
    assert got is not None
    assert got.artifact == {"result": "r", "steps": [], "code": ""}
    store.close()


def test_concurrent_writers_to_one_key_keep_one_artifact(redis_url: str) -> None:
    def writer(i: int) -> None:
        s = RedisStore(redis_url)
        for _ in range(10):
            s.put(_entry("same", f"r{i}", f"w{i}"))
            s.touch("same", f"w{i}")
        s.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    entry = RedisStore(redis_url).get("same")
    assert entry is not None
    assert entry.workflows == [f"w{i}" for i in range(6)]
    assert entry.hits == 60


def test_eviction_removes_the_least_reused_entry(redis_url: str) -> None:
    store = RedisStore(redis_url, half_life=100.0)
    for k in ("a", "b", "c"):
        store.put(_entry(k))
    store.touch("a", "w1")
    store.touch("c", "w2")
    assert store.evict(2) == ["b"]
    assert store.get("b") is None and store.count() == 2


def test_checkpoints_round_trip(redis_url: str) -> None:
    store = RedisStore(redis_url)
    for i in range(3):
        store.save_checkpoint("c", i, {"i": i})
    store.drop_checkpoints("c", 0)
    assert store.checkpoints("c") == [(0, {"i": 0})]


def test_a_redis_that_goes_away_raises_a_typed_retryable_error(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisStore(redis_url, timeout=0.5)
    store.put(_entry("k"))
    redis_server.stop()
    try:
        with pytest.raises(CacheBackendError) as info:
            store.get("k")
        assert info.value.retryable
    finally:
        redis_server.start()


def test_fallback_store_serves_from_sqlite_while_redis_is_down(
    redis_server: RedisServer, redis_url: str, home: Path
) -> None:
    seen: list[CacheBackendError] = []
    store = FallbackStore(
        RedisStore(redis_url, timeout=0.5),
        SQLiteStore(home / "fb.sqlite"),
        retry_after=60.0,
        on_fallback=seen.append,
    )
    store.put(_entry("before"))
    redis_server.stop()
    try:
        store.put(_entry("during"))
        assert store.degraded and len(seen) == 1
        got = store.get("during")
        assert got is not None and got.artifact["result"] == "r"
    finally:
        redis_server.start()

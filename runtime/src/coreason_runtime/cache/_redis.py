"""A Redis store shared by many kernels and workers, and a store that falls back when it fails."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from coreason_runtime._exceptions import CacheBackendError, MissingExtraError
from coreason_runtime.cache._store import (
    DEFAULT_HALF_LIFE,
    DEFAULT_MAX_ENTRY_BYTES,
    CacheStore,
    Entry,
    bumped_lscore,
)

if TYPE_CHECKING:
    import redis

__all__ = ["FallbackStore", "RedisStore"]

logger = logging.getLogger("coreason_runtime.cache")
T = TypeVar("T")

# Every write is one Lua script, so it is applied whole or not at all even if the connection
# drops: a Redis that goes away mid-run never leaves a half-written entry.
# An entry is a hash (``body``: the immutable JSON, ``hits``, ``last_used``, ``lscore``) plus a
# set of workflows; the artifact is never decoded in Lua, so it round-trips byte for byte.
_PUT = """
local added = 0
for i = 6, #ARGV do added = added + redis.call('SADD', KEYS[3], ARGV[i]) end
local now, half = tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'body', ARGV[1], 'hits', 0, 'last_used', now, 'lscore', ARGV[4])
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
elseif added > 0 then
  local cur = 2 ^ (tonumber(redis.call('HGET', KEYS[1], 'lscore')) - now / half)
  local ls = math.log(cur + added) / math.log(2) + now / half
  redis.call('HSET', KEYS[1], 'lscore', tostring(ls))
  redis.call('ZADD', KEYS[2], ls, ARGV[5])
end
return 1
"""

_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local now, half, origin = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local weight = 1
if origin ~= '' and redis.call('SADD', KEYS[3], origin) == 1 then weight = 2 end
redis.call('HINCRBY', KEYS[1], 'hits', 1)
local cur = 2 ^ (tonumber(redis.call('HGET', KEYS[1], 'lscore')) - now / half)
local ls = math.log(cur + weight) / math.log(2) + now / half
redis.call('HSET', KEYS[1], 'lscore', tostring(ls), 'last_used', ARGV[1])
redis.call('ZADD', KEYS[2], ls, ARGV[4])
return 1
"""

_EVICT = """
local n = redis.call('ZCARD', KEYS[1])
local capacity = tonumber(ARGV[1])
if n <= capacity then return {} end
local victims = redis.call('ZRANGE', KEYS[1], 0, n - capacity - 1)
for _, k in ipairs(victims) do
  redis.call('DEL', ARGV[2] .. 'e:' .. k, ARGV[2] .. 's:' .. k, ARGV[2] .. 'w:' .. k)
  redis.call('ZREM', KEYS[1], k)
end
return victims
"""


class RedisStore(CacheStore):
    """Entries as JSON strings, eviction order in a sorted set, checkpoints in hashes.

    Parameters
    ----------
    url:
        ``redis://host:port/db``.
    prefix:
        Namespace for every key (several caches can share one Redis).
    timeout:
        Socket timeout in seconds; a Redis that does not answer raises
        :class:`CacheBackendError` rather than hang.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "coreason:cache:",
        half_life: float = DEFAULT_HALF_LIFE,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        timeout: float = 2.0,
    ) -> None:
        try:
            import redis
        except ImportError as e:
            raise MissingExtraError("redis", "redis") from e
        self.url = url
        self.prefix = prefix
        self.half_life = half_life
        self.max_entry_bytes = max_entry_bytes
        self._errors = (redis.exceptions.RedisError, OSError)
        self._client: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._put = self._client.register_script(_PUT)
        self._touch = self._client.register_script(_TOUCH)
        self._evict = self._client.register_script(_EVICT)
        self._zkey = f"{prefix}lscore"

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except self._errors as e:
            msg = f"Redis cache at {self.url} failed during {what}: {e}; nothing was applied"
            raise CacheBackendError(msg) from e

    def _ekey(self, key: str) -> str:
        return f"{self.prefix}e:{key}"

    def ping(self) -> bool:
        """True if Redis answers."""
        return bool(self._call("ping", self._client.ping))

    def get(self, key: str) -> Entry | None:
        def run() -> Entry | None:
            pipe = self._client.pipeline(transaction=True)
            pipe.hgetall(self._ekey(key))
            pipe.smembers(self._wkey(key))
            fields, workflows = pipe.execute()
            if not fields:
                return None
            entry = Entry.from_json(fields[b"body"])
            entry.hits = int(fields[b"hits"])
            entry.last_used = float(fields[b"last_used"])
            entry.lscore = float(fields[b"lscore"])
            entry.workflows = sorted(w.decode() for w in workflows)
            return entry

        return self._call("get", run)

    def _wkey(self, key: str) -> str:
        return f"{self.prefix}w:{key}"

    def put(self, entry: Entry) -> Entry:
        entry.check_size(self.max_entry_bytes)
        now = time.time()
        lscore = bumped_lscore(
            None, now, self.half_life, 1.0 + 0.5 * max(0, len(entry.workflows) - 1)
        )
        self._call(
            "put",
            lambda: self._put(
                keys=[self._ekey(entry.key), self._zkey, self._wkey(entry.key)],
                args=[
                    entry.to_json(),
                    now,
                    self.half_life,
                    repr(lscore),
                    entry.key,
                    *entry.workflows,
                ],
            ),
        )
        stored = self.get(entry.key)
        return entry if stored is None else stored

    def touch(self, key: str, origin: str, now: float | None = None) -> None:
        at = time.time() if now is None else now
        self._call(
            "touch",
            lambda: self._touch(
                keys=[self._ekey(key), self._zkey, self._wkey(key)],
                args=[repr(at), self.half_life, origin, key],
            ),
        )

    def delete(self, key: str) -> bool:
        def run() -> bool:
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(self._ekey(key), self._wkey(key))
            pipe.zrem(self._zkey, key)
            return bool(pipe.execute()[0])

        return self._call("delete", run)

    def sight(self, key: str, origin: str) -> int:
        def run() -> int:
            pipe = self._client.pipeline(transaction=True)
            pipe.sadd(f"{self.prefix}s:{key}", origin)
            pipe.scard(f"{self.prefix}s:{key}")
            return int(pipe.execute()[1])

        return self._call("sight", run)

    def evict(self, capacity: int) -> list[str]:
        out = self._call(
            "evict", lambda: self._evict(keys=[self._zkey], args=[capacity, self.prefix])
        )
        return [k.decode() if isinstance(k, bytes) else str(k) for k in out]

    def lowest(self) -> tuple[str, float] | None:
        rows: list[Any] = self._call(
            "lowest", lambda: list(self._client.zrange(self._zkey, 0, 0, withscores=True))
        )
        if not rows:
            return None
        k, score = rows[0][0], rows[0][1]
        return (k.decode() if isinstance(k, bytes) else str(k)), float(score)

    def count(self) -> int:
        return int(self._call("count", lambda: self._client.zcard(self._zkey)))

    def save_checkpoint(self, chain: str, index: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, sort_keys=True)
        self._call(
            "save_checkpoint",
            lambda: self._client.hset(f"{self.prefix}ck:{chain}", str(index), body),
        )

    def checkpoints(self, chain: str) -> list[tuple[int, dict[str, Any]]]:
        raw = self._call("checkpoints", lambda: self._client.hgetall(f"{self.prefix}ck:{chain}"))
        return sorted((int(k), json.loads(v)) for k, v in raw.items())

    def drop_checkpoints(self, chain: str, after: int) -> None:
        def run() -> None:
            name = f"{self.prefix}ck:{chain}"
            stale = [k for k in self._client.hkeys(name) if int(k) > after]
            if stale:
                self._client.hdel(name, *stale)

        self._call("drop_checkpoints", run)

    def close(self) -> None:
        self._client.close()


class FallbackStore(CacheStore):
    """Use ``primary`` (Redis); while it fails, serve from ``fallback`` (local SQLite).

    A failing call is answered by the fallback and the primary is tried again after
    ``retry_after`` seconds. ``degraded`` says whether the last call fell back and
    ``on_fallback`` is called with the error each time it happens. Nothing written to the
    fallback is copied back: the two stores stay independent and neither is corrupted.
    """

    def __init__(
        self,
        primary: CacheStore,
        fallback: CacheStore,
        *,
        retry_after: float = 5.0,
        on_fallback: Callable[[CacheBackendError], None] | None = None,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.retry_after = retry_after
        self.on_fallback = on_fallback
        self.half_life = primary.half_life
        self.max_entry_bytes = primary.max_entry_bytes
        self.name = f"{primary.name}+{fallback.name}"
        self._down_until = 0.0
        self._lock = threading.Lock()
        self.degraded = False

    def _route(self, method: str, *args: Any) -> Any:
        if time.monotonic() >= self._down_until:
            try:
                out = getattr(self.primary, method)(*args)
            except CacheBackendError as e:
                with self._lock:
                    self._down_until = time.monotonic() + self.retry_after
                    self.degraded = True
                logger.warning(
                    "cache primary %s failed (%s); using %s",
                    self.primary.name,
                    e,
                    self.fallback.name,
                )
                if self.on_fallback is not None:
                    self.on_fallback(e)
            else:
                self.degraded = False
                return out
        return getattr(self.fallback, method)(*args)

    def get(self, key: str) -> Entry | None:
        out: Entry | None = self._route("get", key)
        return out

    def put(self, entry: Entry) -> Entry:
        out: Entry = self._route("put", entry)
        return out

    def touch(self, key: str, origin: str, now: float | None = None) -> None:
        self._route("touch", key, origin, now)

    def delete(self, key: str) -> bool:
        return bool(self._route("delete", key))

    def sight(self, key: str, origin: str) -> int:
        return int(self._route("sight", key, origin))

    def evict(self, capacity: int) -> list[str]:
        out: list[str] = self._route("evict", capacity)
        return out

    def lowest(self) -> tuple[str, float] | None:
        out: tuple[str, float] | None = self._route("lowest")
        return out

    def count(self) -> int:
        return int(self._route("count"))

    def save_checkpoint(self, chain: str, index: int, payload: dict[str, Any]) -> None:
        self._route("save_checkpoint", chain, index, payload)

    def checkpoints(self, chain: str) -> list[tuple[int, dict[str, Any]]]:
        out: list[tuple[int, dict[str, Any]]] = self._route("checkpoints", chain)
        return out

    def drop_checkpoints(self, chain: str, after: int) -> None:
        self._route("drop_checkpoints", chain, after)

    def close(self) -> None:
        self.primary.close()
        self.fallback.close()

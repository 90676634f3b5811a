"""Ledgers in Redis: atomic check-and-charge by Lua scripts, shared by every worker."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from coreason_runtime._exceptions import (
    BudgetExceededError,
    LedgerBackendError,
    MissingExtraError,
    UnknownWorkflowError,
)
from coreason_runtime.budget._models import Charge, LeaseGrowth, Ledger, ReservationRecord
from coreason_runtime.budget._owners import owner_gone
from coreason_runtime.budget._sqlite import RECOVERED_NOTE, recovered_charge

__all__ = ["RedisLedgerBackend"]

# KEYS[1] ledger hash, KEYS[2] reservation hash; ARGV: want, minimum, record json, id.
# A reservation already held is granted again unchanged: the client resends a script whose
# reply a dropped connection lost (a Redis restart), and it must not be reserved twice.
_RESERVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
local held = redis.call('HGET', KEYS[2], ARGV[4] .. ':granted')
if held then return {1, held} end
local ceiling = redis.call('HGET', KEYS[1], 'ceiling')
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local want = tonumber(ARGV[1])
local grant = want
local available = want
if ceiling and ceiling ~= '' then
  available = tonumber(ceiling) - spent - reserved
  if available < grant then grant = available end
end
if grant < tonumber(ARGV[2]) then return {0, tostring(available)} end
redis.call('HINCRBYFLOAT', KEYS[1], 'reserved', grant)
redis.call('HSET', KEYS[2], ARGV[4], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[4] .. ':granted', tostring(grant))
return {1, tostring(grant)}
"""

# KEYS[1] ledger hash, KEYS[2] reservation hash, KEYS[3] waiting leases hash;
# ARGV: id, want, minimum, consumed, record json. A lease that cannot grow gives its grant above
# what it consumed back and is marked waiting; the ledger's 'pinned' sums waiting grants.
_GROW = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, '0', '0'} end
local gkey = ARGV[1] .. ':granted'
local old = redis.call('HGET', KEYS[2], gkey)
if not old then return {-2, '0', '0'} end
old = tonumber(old)
local was_waiting = redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1
local ceiling = redis.call('HGET', KEYS[1], 'ceiling')
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local pinned = tonumber(redis.call('HGET', KEYS[1], 'pinned') or '0')
local add = tonumber(ARGV[2])
if ceiling and ceiling ~= '' then
  local available = tonumber(ceiling) - spent - reserved
  if available < add then add = available end
end
if was_waiting then pinned = pinned - old end
local granted = old
local grown = 0
if add >= tonumber(ARGV[3]) - 1e-9 then
  granted = old + add
  grown = 1
  redis.call('HDEL', KEYS[3], ARGV[1])
else
  local consumed = tonumber(ARGV[4])
  if consumed < granted then granted = consumed end
  if granted < 0 then granted = 0 end
  pinned = pinned + granted
  redis.call('HSET', KEYS[3], ARGV[1], '1')
end
reserved = reserved + granted - old
if reserved < 0 then reserved = 0 end
if pinned < 0 then pinned = 0 end
redis.call('HSET', KEYS[1], 'reserved', tostring(reserved), 'pinned', tostring(pinned))
redis.call('HSET', KEYS[2], gkey, tostring(granted), ARGV[1], ARGV[5])
local others = reserved - pinned
if grown == 1 then others = others - granted end
if others < 0 then others = 0 end
return {grown, tostring(granted), tostring(others)}
"""

# KEYS[1] ledger, KEYS[2] reservations, KEYS[3] charges list, KEYS[4] waiting leases,
# KEYS[5] the settled marker; ARGV: id, cost, tokens_in, tokens_out, tier, charge json,
# marker ttl (s). A reservation gone with its settled marker set was settled before (by a
# recovery): it charges nothing (0). A charge without a reservation (a human's answer) has no
# marker.
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local held = redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1
if not held and redis.call('EXISTS', KEYS[5]) == 1 then return 0 end
local granted = tonumber(redis.call('HGET', KEYS[2], ARGV[1] .. ':granted') or '0')
if redis.call('HDEL', KEYS[4], ARGV[1]) == 1 then
  local pinned = tonumber(redis.call('HGET', KEYS[1], 'pinned') or '0') - granted
  if pinned < 0 then pinned = 0 end
  redis.call('HSET', KEYS[1], 'pinned', tostring(pinned))
end
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local left = reserved - granted
if left < 0 then left = 0 end
redis.call('HSET', KEYS[1], 'reserved', tostring(left))
redis.call('HINCRBYFLOAT', KEYS[1], 'spent', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'tokens_in', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'tokens_out', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'requests', 1)
redis.call('HINCRBYFLOAT', KEYS[1], 'tier:' .. ARGV[5], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[1], ARGV[1] .. ':granted')
redis.call('RPUSH', KEYS[3], ARGV[6])
if held then redis.call('SET', KEYS[5], '1', 'EX', tonumber(ARGV[7])) end
return 1
"""

# KEYS[1] reservations; ARGV: id, record json. A checkpoint never brings back a settled one.
_CHECKPOINT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# how long a settled reservation is remembered (a late settle of it charges nothing)
_SETTLED_TTL_S = 7 * 24 * 3600
_RECONNECT_S = 8.0  # how long a lost connection is retried (a Redis restart takes about 1 s)


_FOREIGN_ORPHAN_AFTER_S = 3600.0


def local_owner_gone(record: ReservationRecord) -> bool:
    """Whether ``record``'s owner is gone: by pid and start time on this host; on another
    host (whose processes this one cannot see) once the reservation is an hour old."""
    if record.host == socket.gethostname():
        return owner_gone(record.pid, record.created)
    return record.created < time.time() - _FOREIGN_ORPHAN_AFTER_S


class RedisLedgerBackend:
    """Ledgers as Redis hashes under ``prefix``; every read-check-write is one Lua script.

    Parameters
    ----------
    url:
        ``redis://host:port/db``.
    prefix:
        Key namespace, so several projects can share one server.
    owner_gone:
        ``owner_gone(record) -> bool``: whether the process that made a reservation is gone,
        so the reservation is an orphan. By default a process of this host is tested by pid
        and start time, and another host's reservation counts as orphaned after an hour; a
        cluster passes its workers' liveness (``coreason_runtime.scale``).
    """

    def __init__(
        self,
        url: str,
        prefix: str = "coreason:budget",
        *,
        owner_gone: Callable[[ReservationRecord], bool] | None = None,
    ) -> None:
        try:
            import redis
        except ImportError as e:
            raise MissingExtraError("redis", "redis") from e
        self._redis_mod = redis
        self.url = url
        self.prefix = prefix
        self.owner_gone = owner_gone or local_owner_gone
        self._r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5.0)
        try:
            self._reserve = self._r.register_script(_RESERVE)
            self._settle = self._r.register_script(_SETTLE)
            self._checkpoint = self._r.register_script(_CHECKPOINT)
            self._grow = self._r.register_script(_GROW)
            self._r.ping()
        except redis.RedisError as e:
            msg = f"cannot reach the Redis ledger store at {url}: {e}"
            raise LedgerBackendError(msg) from e

    def _k(self, workflow_id: str) -> str:
        return f"{self.prefix}:ledger:{workflow_id}"

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``; a lost connection (a restarting server) is retried for up to
        ``_RECONNECT_S``, any other failure is a ``LedgerBackendError`` at once. A reservation
        or settlement whose reply was lost is found done on retry (both scripts are idempotent);
        a growth repeated that way only holds more of Ω until its lease settles."""
        redis = self._redis_mod
        transient = (redis.ConnectionError, redis.TimeoutError)
        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(transient),
                stop=stop_after_delay(_RECONNECT_S),
                wait=wait_exponential(multiplier=0.05, max=1.0),
                reraise=True,
            ):
                with attempt:
                    return fn(*args, **kwargs)
        except redis.RedisError as e:
            msg = f"Redis ledger store at {self.url} failed: {e}"
            raise LedgerBackendError(msg) from e
        raise AssertionError("unreachable")  # Retrying either returns or raises

    def _ledger(self, workflow_id: str, h: dict[str, str]) -> Ledger:
        ceiling = h.get("ceiling")
        return Ledger(
            workflow_id=workflow_id,
            ceiling=float(ceiling) if ceiling not in (None, "") else None,
            spent=float(h.get("spent", 0)),
            reserved=float(h.get("reserved", 0)),
            tokens_in=int(h.get("tokens_in", 0)),
            tokens_out=int(h.get("tokens_out", 0)),
            requests=int(h.get("requests", 0)),
            by_tier={k[5:]: float(v) for k, v in h.items() if k.startswith("tier:")},
        )

    def set_ceiling(self, workflow_id: str, ceiling: float | None) -> Ledger:
        self._call(
            self._r.hset,
            self._k(workflow_id),
            "ceiling",
            "" if ceiling is None else repr(float(ceiling)),
        )
        self._call(self._r.sadd, f"{self.prefix}:workflows", workflow_id)
        return self._require(workflow_id)

    def _require(self, workflow_id: str) -> Ledger:
        led = self.get(workflow_id)
        if led is None:
            msg = f"no ledger for workflow {workflow_id!r}; set one with budgets.set(...)"
            raise UnknownWorkflowError(msg, workflow_id=workflow_id)
        return led

    def get(self, workflow_id: str) -> Ledger | None:
        h = self._call(self._r.hgetall, self._k(workflow_id))
        return self._ledger(workflow_id, h) if h else None

    def ledgers(self) -> list[Ledger]:
        names = sorted(self._call(self._r.smembers, f"{self.prefix}:workflows"))
        return [led for n in names if (led := self.get(n)) is not None]

    def reset(self, workflow_id: str) -> Ledger:
        led = self._require(workflow_id)
        pinned = self._call(self._r.hget, self._k(workflow_id), "pinned") or "0"
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._k(workflow_id), f"{self.prefix}:charges:{workflow_id}")
        pipe.hset(
            self._k(workflow_id),
            mapping={
                "ceiling": "" if led.ceiling is None else repr(led.ceiling),
                "reserved": repr(led.reserved),
                "pinned": pinned,
            },
        )
        self._call(pipe.execute)
        return self._require(workflow_id)

    def delete(self, workflow_id: str) -> None:
        self._require(workflow_id)
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._k(workflow_id), f"{self.prefix}:charges:{workflow_id}")
        pipe.srem(f"{self.prefix}:workflows", workflow_id)
        self._call(pipe.execute)

    def reserve(self, record: ReservationRecord, minimum: float) -> float:
        ok, value = self._call(
            self._reserve,
            keys=[self._k(record.workflow_id), f"{self.prefix}:reservations"],
            args=[
                repr(record.granted),
                repr(minimum),
                record.model_dump_json(),
                record.reservation_id,
            ],
        )
        if ok == -1:
            msg = f"no ledger for workflow {record.workflow_id!r}; set one with budgets.set(...)"
            raise UnknownWorkflowError(msg, workflow_id=record.workflow_id)
        if ok == 0:
            led = self.get(record.workflow_id)
            msg = (
                f"workflow {record.workflow_id!r}: request needs at least {minimum:g} but "
                f"only {max(float(value), 0):g} is left"
            )
            raise BudgetExceededError(
                msg,
                workflow_id=record.workflow_id,
                tier=record.tier,
                ceiling=led.ceiling if led else None,
                spent=led.spent if led else None,
                requested=minimum,
                ledger=led,
            )
        return float(value)

    def grow(self, record: ReservationRecord, want: float, minimum: float) -> LeaseGrowth:
        grown, granted, others = self._call(
            self._grow,
            keys=[
                self._k(record.workflow_id),
                f"{self.prefix}:reservations",
                f"{self.prefix}:waiting",
            ],
            args=[
                record.reservation_id,
                repr(want),
                repr(minimum),
                repr(record.consumed),
                record.model_dump_json(),
            ],
        )
        if grown == -1:
            msg = f"no ledger for workflow {record.workflow_id!r}; set one with budgets.set(...)"
            raise UnknownWorkflowError(msg, workflow_id=record.workflow_id)
        if grown == -2:
            msg = f"lease {record.reservation_id} is no longer in {self.url} (recovered?)"
            raise LedgerBackendError(msg)
        return LeaseGrowth(granted=float(granted), grown=grown == 1, releasable=float(others))

    def releasable(self, workflow_id: str) -> float:
        reserved, pinned = self._call(self._r.hmget, self._k(workflow_id), "reserved", "pinned")
        return max(float(reserved or 0) - float(pinned or 0), 0.0)

    def checkpoint(self, record: ReservationRecord) -> None:
        self._call(
            self._checkpoint,
            keys=[f"{self.prefix}:reservations"],
            args=[record.reservation_id, record.model_dump_json()],
        )

    def settle(self, record: ReservationRecord, charge: Charge) -> Ledger:
        self._apply(record, charge)
        return self._require(record.workflow_id)

    def _apply(self, record: ReservationRecord, charge: Charge) -> bool:
        """Settle in one script; False when the reservation was settled before (no charge)."""
        out = self._call(
            self._settle,
            keys=[
                self._k(record.workflow_id),
                f"{self.prefix}:reservations",
                f"{self.prefix}:charges:{record.workflow_id}",
                f"{self.prefix}:waiting",
                f"{self.prefix}:settled:{record.reservation_id}",
            ],
            args=[
                record.reservation_id,
                repr(charge.cost),
                charge.tokens_in,
                charge.tokens_out,
                charge.tier,
                charge.model_dump_json(),
                _SETTLED_TTL_S,
            ],
        )
        if out == -1:
            msg = f"no ledger for workflow {record.workflow_id!r}"
            raise UnknownWorkflowError(msg, workflow_id=record.workflow_id)
        return bool(out == 1)

    def history(self, workflow_id: str, limit: int = 1000) -> list[Charge]:
        raw = self._call(self._r.lrange, f"{self.prefix}:charges:{workflow_id}", -limit, -1)
        return [Charge.model_validate_json(x) for x in raw]

    def orphans(self) -> list[ReservationRecord]:
        # Reservations in a shared store belong to many hosts and processes: `owner_gone`
        # says which owners are gone.
        raw = self._call(self._r.hgetall, f"{self.prefix}:reservations")
        out = []
        for key, value in raw.items():
            if key.endswith(":granted"):
                continue
            rec = ReservationRecord.model_validate(json.loads(value))
            if self.owner_gone(rec):
                granted = float(raw.get(f"{key}:granted", rec.granted))
                out.append(rec.model_copy(update={"granted": granted}))
        return out

    def recover_orphans(self, note: str = RECOVERED_NOTE) -> list[Charge]:
        """Settle every orphan at its last checkpoint; the settle script re-checks each one
        atomically, so recoveries racing on many workers charge it once."""
        charges: list[Charge] = []
        for record in self.orphans():
            charge = recovered_charge(record, note)
            try:
                applied = self._apply(record, charge)
            except UnknownWorkflowError:
                continue  # its ledger was deleted meanwhile
            if applied:
                charges.append(charge)
        return charges

    def close(self) -> None:
        self._r.close()

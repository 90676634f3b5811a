"""Ledgers in this process only: the same semantics as SQLite, for tests and scratch work."""

from __future__ import annotations

import threading

from coreason_runtime._exceptions import (
    BudgetExceededError,
    LedgerBackendError,
    UnknownWorkflowError,
)
from coreason_runtime.budget._models import Charge, LeaseGrowth, Ledger, ReservationRecord
from coreason_runtime.budget._sqlite import RECOVERED_NOTE, grow_grant

__all__ = ["MemoryLedgerBackend"]


class MemoryLedgerBackend:
    """Ledgers in this process only (tests, scratch work); same semantics as SQLite."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ledgers: dict[str, Ledger] = {}
        self._reservations: dict[str, ReservationRecord] = {}
        self._waiting: set[str] = set()  # leases that gave their unused grant back and wait
        self._charges: dict[str, list[Charge]] = {}
        self._settled: set[str] = set()

    def _require(self, workflow_id: str) -> Ledger:
        ledger = self._ledgers.get(workflow_id)
        if ledger is None:
            msg = f"no ledger for workflow {workflow_id!r}; set one with budgets.set(...)"
            raise UnknownWorkflowError(msg, workflow_id=workflow_id)
        return ledger

    def set_ceiling(self, workflow_id: str, ceiling: float | None) -> Ledger:
        with self._lock:
            old = self._ledgers.get(workflow_id) or Ledger(workflow_id=workflow_id, ceiling=None)
            self._ledgers[workflow_id] = new = old.model_copy(update={"ceiling": ceiling})
            return new

    def get(self, workflow_id: str) -> Ledger | None:
        return self._ledgers.get(workflow_id)

    def ledgers(self) -> list[Ledger]:
        return sorted(self._ledgers.values(), key=lambda led: led.workflow_id)

    def reset(self, workflow_id: str) -> Ledger:
        with self._lock:
            old = self._require(workflow_id)
            new = Ledger(workflow_id=workflow_id, ceiling=old.ceiling, reserved=old.reserved)
            self._ledgers[workflow_id] = new
            self._charges.pop(workflow_id, None)
            return new

    def delete(self, workflow_id: str) -> None:
        with self._lock:
            self._require(workflow_id)
            del self._ledgers[workflow_id]
            self._charges.pop(workflow_id, None)

    def reserve(self, record: ReservationRecord, minimum: float) -> float:
        with self._lock:
            led = self._require(record.workflow_id)
            grant = min(record.granted, led.remaining)
            if grant < minimum:
                msg = (
                    f"workflow {record.workflow_id!r}: request needs at least {minimum:g} but "
                    f"only {max(led.remaining, 0):g} of Ω={led.ceiling:g} is left"
                )
                raise BudgetExceededError(
                    msg,
                    workflow_id=record.workflow_id,
                    tier=record.tier,
                    ceiling=led.ceiling,
                    spent=led.spent,
                    requested=minimum,
                    ledger=led,
                )
            self._ledgers[record.workflow_id] = led.model_copy(
                update={"reserved": led.reserved + grant}
            )
            self._reservations[record.reservation_id] = record.model_copy(update={"granted": grant})
            return grant

    def grow(self, record: ReservationRecord, want: float, minimum: float) -> LeaseGrowth:
        with self._lock:
            led = self._require(record.workflow_id)
            old = self._reservations.get(record.reservation_id)
            if old is None:
                msg = f"lease {record.reservation_id} is no longer in memory (recovered?)"
                raise LedgerBackendError(msg)
            available = want if led.ceiling is None else led.remaining
            granted, grown = grow_grant(old.granted, record.consumed, min(want, available), minimum)
            self._ledgers[record.workflow_id] = led.model_copy(
                update={"reserved": max(led.reserved + granted - old.granted, 0.0)}
            )
            self._reservations[record.reservation_id] = record.model_copy(
                update={"granted": granted}
            )
            if grown:
                self._waiting.discard(record.reservation_id)
            else:
                self._waiting.add(record.reservation_id)
            others = self._releasable(record.workflow_id, but=record.reservation_id)
            return LeaseGrowth(granted, grown, others)

    def _releasable(self, workflow_id: str, but: str = "") -> float:
        return sum(
            r.granted
            for r in self._reservations.values()
            if r.workflow_id == workflow_id
            and r.reservation_id not in self._waiting
            and r.reservation_id != but
        )

    def releasable(self, workflow_id: str) -> float:
        with self._lock:
            return self._releasable(workflow_id)

    def checkpoint(self, record: ReservationRecord) -> None:
        with self._lock:
            old = self._reservations.get(record.reservation_id)
            if old is not None:  # the stored grant is the lease's; the record may be older
                self._reservations[record.reservation_id] = record.model_copy(
                    update={"granted": old.granted}
                )

    def settle(self, record: ReservationRecord, charge: Charge) -> Ledger:
        with self._lock:
            led = self._require(record.workflow_id)
            res = self._reservations.pop(record.reservation_id, None)
            self._waiting.discard(record.reservation_id)
            if res is None and record.reservation_id in self._settled:
                return led  # settled already: charged once
            self._settled.add(record.reservation_id)
            by_tier = dict(led.by_tier)
            by_tier[charge.tier] = by_tier.get(charge.tier, 0.0) + charge.cost
            new = led.model_copy(
                update={
                    "reserved": max(led.reserved - (res.granted if res else 0.0), 0.0),
                    "spent": led.spent + charge.cost,
                    "tokens_in": led.tokens_in + charge.tokens_in,
                    "tokens_out": led.tokens_out + charge.tokens_out,
                    "requests": led.requests + 1,
                    "by_tier": by_tier,
                }
            )
            self._ledgers[record.workflow_id] = new
            self._charges.setdefault(record.workflow_id, []).append(charge)
            return new

    def history(self, workflow_id: str, limit: int = 1000) -> list[Charge]:
        return list(self._charges.get(workflow_id, []))[-limit:]

    def orphans(self) -> list[ReservationRecord]:
        return []  # every reservation lives and dies with this process

    def recover_orphans(self, note: str = RECOVERED_NOTE) -> list[Charge]:
        return []

    def close(self) -> None:
        pass

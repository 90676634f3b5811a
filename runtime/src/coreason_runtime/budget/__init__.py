"""The budget cage: per-workflow ceilings, leases that grow as tokens are consumed, ledgers."""

from __future__ import annotations

from coreason_runtime.budget._cage import DEFAULT_WORKFLOW, BudgetCage, Reservation
from coreason_runtime.budget._memory import MemoryLedgerBackend
from coreason_runtime.budget._models import (
    Charge,
    LeaseGrowth,
    Ledger,
    LedgerBackend,
    ReservationRecord,
)
from coreason_runtime.budget._sqlite import SQLiteLedgerBackend


def __getattr__(name: str) -> object:
    if name == "RedisLedgerBackend":  # needs the optional `redis` package
        from coreason_runtime.budget._redis import RedisLedgerBackend

        return RedisLedgerBackend
    raise AttributeError(name)


__all__ = [
    "DEFAULT_WORKFLOW",
    "BudgetCage",
    "Charge",
    "LeaseGrowth",
    "Ledger",
    "LedgerBackend",
    "MemoryLedgerBackend",
    "RedisLedgerBackend",
    "Reservation",
    "ReservationRecord",
    "SQLiteLedgerBackend",
]

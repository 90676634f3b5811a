"""Ledger records and the backend interface every ledger store implements."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Charge", "LeaseGrowth", "Ledger", "LedgerBackend", "ReservationRecord"]


class Ledger(BaseModel):
    """A workflow's account: ceiling Ω, what was spent, what is reserved by requests in flight."""

    model_config = ConfigDict(frozen=True)

    workflow_id: str
    ceiling: float | None = Field(description="Ω; None means no ceiling")
    spent: float = 0.0
    reserved: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    requests: int = 0
    by_tier: dict[str, float] = Field(default_factory=dict)

    @property
    def remaining(self) -> float:
        """Ω − spent − reserved (``inf`` without a ceiling)."""
        if self.ceiling is None:
            return math.inf
        return self.ceiling - self.spent - self.reserved


class Charge(BaseModel):
    """One settled request: appended to the ledger's history, never rewritten."""

    model_config = ConfigDict(frozen=True)

    workflow_id: str
    tier: str
    tokens_in: int
    tokens_out: int
    cost: float
    ts: float
    reservation_id: str
    note: str = ""


class ReservationRecord(BaseModel):
    """A reservation (a lease) as stored: its grant and the consumption last checkpointed."""

    model_config = ConfigDict(frozen=True)

    reservation_id: str
    workflow_id: str
    tier: str
    granted: float
    consumed: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    pid: int = 0
    host: str = ""
    created: float = 0.0


@dataclass(frozen=True)
class LeaseGrowth:
    """What :meth:`LedgerBackend.grow` did to a lease, decided in one atomic step.

    ``granted`` is the lease's grant now; ``grown`` whether it grew. When it did not, the
    lease gave its unused grant back (``granted`` is its consumption) and waits.
    ``releasable`` is the grant of the *other* leases of the workflow that are not waiting:
    the most that settling them could give back. Zero means nothing in flight can free room.
    """

    granted: float
    grown: bool
    releasable: float


@runtime_checkable
class LedgerBackend(Protocol):
    """A ledger store. Every method is atomic across threads and, where the store allows,
    across processes; a method that raises has changed nothing."""

    def set_ceiling(self, workflow_id: str, ceiling: float | None) -> Ledger: ...

    def get(self, workflow_id: str) -> Ledger | None: ...

    def ledgers(self) -> list[Ledger]: ...

    def reset(self, workflow_id: str) -> Ledger: ...

    def delete(self, workflow_id: str) -> None: ...

    def reserve(self, record: ReservationRecord, minimum: float) -> float:
        """Grant ``min(record.granted, remaining)``; raise BudgetExceededError, changing
        nothing, if that is below ``minimum``. Returns the grant."""
        ...

    def grow(self, record: ReservationRecord, want: float, minimum: float) -> LeaseGrowth:
        """Grow a lease: add ``min(want, remaining)`` to its grant if that is at least
        ``minimum``, and checkpoint ``record``'s consumption. Otherwise give the grant above
        ``record.consumed`` back and mark the lease waiting, so that the room it held can
        serve others; a later grow clears the mark. Raises ``LedgerBackendError`` if the
        lease is no longer stored (settled by crash recovery)."""
        ...

    def releasable(self, workflow_id: str) -> float:
        """The grant of the workflow's leases that are not waiting (see :class:`LeaseGrowth`)."""
        ...

    def checkpoint(self, record: ReservationRecord) -> None:
        """Persist the consumption so far, so a crash loses no charge."""
        ...

    def settle(self, record: ReservationRecord, charge: Charge) -> Ledger:
        """Release the reservation (its whole current grant, waiting or not) and add the
        charge, in one step. A reservation settled before (by a recovery) charges nothing
        again."""
        ...

    def history(self, workflow_id: str, limit: int = 1000) -> list[Charge]: ...

    def orphans(self) -> list[ReservationRecord]:
        """Reservations whose owning process is gone (crashed mid-request)."""
        ...

    def recover_orphans(self, note: str = ...) -> list[Charge]:
        """Settle every orphan at its last checkpoint, atomically with finding it: a recovery
        racing another charges each orphan once. Returns the charges made."""
        ...

    def close(self) -> None: ...

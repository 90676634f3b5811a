"""The BudgetCage: per-workflow ceilings Ω, reservations before dispatch, metering after.

A request's cost is C = w_in·T_in + w_out·T_out (default w_in = 1, w_out = 3). Before a tier is
called, the cage reserves ``w_in·T_in + w_out·max_tokens`` — or whatever is left under Ω if that
is less, as long as the prompt and one output token fit. Concurrent requests therefore can never
together reserve more than Ω. While the tier runs it charges tokens to the reservation (the
:class:`Reservation` is the tier's ``Meter``); the moment a charge would cross the grant the
reservation raises :class:`BudgetExceededError` and the tier stops. Settling releases the grant
and adds what was really consumed, in one atomic step.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from coreason_runtime._events import EventBus, EventType
from coreason_runtime._exceptions import (
    BudgetExceededError,
    ConfigurationError,
    InvalidCeilingError,
    UnknownWorkflowError,
)
from coreason_runtime.budget._models import Charge, Ledger, LedgerBackend, ReservationRecord
from coreason_runtime.budget._sqlite import MemoryLedgerBackend, SQLiteLedgerBackend

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator

__all__ = ["DEFAULT_WORKFLOW", "BudgetCage", "Reservation"]

DEFAULT_WORKFLOW = "default"
_CHECKPOINT_EVERY_S = 0.5


def _positive(name: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as e:
        msg = f"{name} must be a number, got {value!r}"
        raise InvalidCeilingError(msg) from e
    if not math.isfinite(number) or number <= 0:
        msg = f"{name} must be a positive finite number, got {value!r}"
        raise InvalidCeilingError(msg)
    return number


class Reservation:
    """A grant held for one request; the tier's meter. Thread-safe.

    Use :meth:`charge` as tokens are consumed; :attr:`max_out` says how many more output tokens
    fit. :meth:`settle` (or leaving the ``with`` block of :meth:`BudgetCage.reserve`) writes the
    real consumption to the ledger exactly once.
    """

    def __init__(self, cage: BudgetCage, record: ReservationRecord, estimated_in: int = 0) -> None:
        self._cage = cage
        self.record = record
        self.estimated_in = estimated_in
        self.granted = record.granted
        self.tokens_in = 0
        self.tokens_out = 0
        self._lock = threading.Lock()
        self._settled = False
        self._last_checkpoint = time.monotonic()
        self.exceeded = False

    @property
    def workflow_id(self) -> str:
        return self.record.workflow_id

    @property
    def tier(self) -> str:
        return self.record.tier

    @property
    def consumed(self) -> float:
        return self._cage.cost(self.tokens_in, self.tokens_out)

    @property
    def max_out(self) -> int:
        """Output tokens that still fit in the grant, keeping room for the prompt tokens that
        were reserved but not yet charged (a stream learns its prompt size only at the end)."""
        pending_in = max(self.estimated_in - self.tokens_in, 0)
        left = self.granted - self.consumed - self._cage.weight_in * pending_in
        return max(math.floor(left / self._cage.weight_out + 1e-9), 0)

    def check(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        """Raise :class:`BudgetExceededError` if consuming this much more would cross the grant.

        A tier that can stop *before* consuming (a local decoder) calls this first, so it never
        overshoots; a stream that learns of tokens only after receiving them calls
        :meth:`charge` alone and overshoots by at most that chunk.
        """
        with self._lock:
            after = self._cage.cost(self.tokens_in + tokens_in, self.tokens_out + tokens_out)
            if after > self.granted + 1e-9:
                self._raise(after)

    def charge(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        """Record consumed tokens; raise :class:`BudgetExceededError` if they crossed the grant.

        The tokens are recorded even when the charge raises: they were consumed.
        """
        if tokens_in < 0 or tokens_out < 0:
            msg = f"token counts must be non-negative, got in={tokens_in}, out={tokens_out}"
            raise ValueError(msg)
        with self._lock:
            if self._settled:
                msg = "charge after settle: the reservation is closed"
                raise BudgetExceededError(msg, workflow_id=self.workflow_id, tier=self.tier)
            self.tokens_in += tokens_in
            self.tokens_out += tokens_out
            consumed = self.consumed
            now = time.monotonic()
            if now - self._last_checkpoint > _CHECKPOINT_EVERY_S:
                self._last_checkpoint = now
                self.checkpoint()
            if consumed > self.granted + 1e-9:
                self._raise(consumed)

    def _raise(self, would_be: float) -> None:
        self.exceeded = True
        ledger = self._cage.backend.get(self.workflow_id)
        msg = (
            f"workflow {self.workflow_id!r}: ceiling Ω={ledger.ceiling if ledger else None} "
            f"reached on tier {self.tier!r} after {self.tokens_in} tokens in and "
            f"{self.tokens_out} out (C={self.consumed:g}, this request's grant "
            f"{self.granted:g}); request cut off"
        )
        self._cage.bus.emit(
            EventType.BUDGET_EXCEEDED,
            workflow_id=self.workflow_id,
            source="budget",
            tier=self.tier,
            stage="charge",
            requested=would_be,
            granted=self.granted,
            consumed=self.consumed,
        )
        raise BudgetExceededError(
            msg,
            workflow_id=self.workflow_id,
            tier=self.tier,
            ceiling=ledger.ceiling if ledger else None,
            spent=ledger.spent if ledger else None,
            requested=would_be,
            ledger=ledger,
        )

    def settle(self, note: str = "") -> Ledger | None:
        """Release the grant and charge what was consumed; idempotent."""
        with self._lock:
            if self._settled:
                return None
            self._settled = True
        return self._write(note)

    def checkpoint(self) -> None:
        """Record the consumption so far durably, so that if this process dies the orphaned
        reservation is charged up to here (:meth:`charge` does it every 0.5 s)."""
        self._cage.backend.checkpoint(
            self.record.model_copy(
                update={
                    "consumed": self.consumed,
                    "tokens_in": self.tokens_in,
                    "tokens_out": self.tokens_out,
                }
            )
        )

    def _write(self, note: str) -> Ledger:
        """Charge the ledger what was consumed and release the grant."""
        charge = Charge(
            workflow_id=self.workflow_id,
            tier=self.tier,
            tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
            cost=self.consumed,
            ts=time.time(),
            reservation_id=self.record.reservation_id,
            note=note or ("cut off at ceiling" if self.exceeded else ""),
        )
        ledger = self._cage.backend.settle(self.record, charge)
        self._cage.bus.emit(
            EventType.BUDGET_CHARGED,
            workflow_id=self.workflow_id,
            source="budget",
            tier=self.tier,
            tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
            cost=charge.cost,
            spent=ledger.spent,
            ceiling=ledger.ceiling,
            released=self.granted,
        )
        return ledger


class BudgetCage:
    """Ceilings and ledgers per workflow, enforced for every tier.

    Parameters
    ----------
    backend:
        Where ledgers live: :class:`SQLiteLedgerBackend` (default, survives restarts, shared
        by processes on one machine), :class:`RedisLedgerBackend` (shared by many machines) or
        :class:`MemoryLedgerBackend`.
    bus:
        Events ``budget.*`` are published here.
    weight_in, weight_out:
        C = weight_in·T_in + weight_out·T_out.
    """

    def __init__(
        self,
        backend: LedgerBackend | None = None,
        bus: EventBus | None = None,
        *,
        weight_in: float = 1.0,
        weight_out: float = 3.0,
    ) -> None:
        self.backend: LedgerBackend = backend if backend is not None else MemoryLedgerBackend()
        self.bus = bus if bus is not None else EventBus()
        self.weight_in = _positive("weight_in", weight_in)
        self.weight_out = _positive("weight_out", weight_out)
        if self.backend.get(DEFAULT_WORKFLOW) is None:
            self.backend.set_ceiling(DEFAULT_WORKFLOW, None)
        self._recover_orphans()

    @classmethod
    def for_runtime(cls, rt: Coordinator) -> BudgetCage:
        """The cage a Coordinator uses, on the backend its config names."""
        cfg = rt.config
        backend: LedgerBackend
        if cfg.budget_backend == "sqlite":
            backend = SQLiteLedgerBackend(rt.home / "budgets.sqlite")
        elif cfg.budget_backend == "redis":
            if not cfg.redis_url:
                msg = "budget_backend='redis' needs COREASON_REDIS_URL (or redis_url=...)"
                raise ConfigurationError(msg)
            from coreason_runtime.budget._redis import RedisLedgerBackend

            backend = RedisLedgerBackend(cfg.redis_url)
        elif cfg.budget_backend == "memory":
            backend = MemoryLedgerBackend()
        else:
            msg = f"unknown budget backend {cfg.budget_backend!r}; use sqlite, redis or memory"
            raise ConfigurationError(msg)
        return cls(backend, rt.bus, weight_in=cfg.weight_in, weight_out=cfg.weight_out)

    # --- cost ------------------------------------------------------------------------------

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        """C = w_in·T_in + w_out·T_out."""
        return self.weight_in * tokens_in + self.weight_out * tokens_out

    # --- ledgers ---------------------------------------------------------------------------

    def set(self, workflow_id: str, ceiling: float | None) -> Ledger:
        """Create a workflow's ledger or change its ceiling Ω (``None``: no ceiling).

        Raises
        ------
        InvalidCeilingError
            If ``ceiling`` is not a positive finite number.
        """
        if not isinstance(workflow_id, str) or not workflow_id.strip():
            msg = f"workflow_id must be a non-empty string, got {workflow_id!r}"
            raise InvalidCeilingError(msg)
        value = None if ceiling is None else _positive("ceiling", ceiling)
        ledger = self.backend.set_ceiling(workflow_id, value)
        self.bus.emit(
            EventType.BUDGET_SET,
            workflow_id=workflow_id,
            source="budget",
            ceiling=value,
            spent=ledger.spent,
        )
        return ledger

    def get(self, workflow_id: str) -> Ledger:
        """The workflow's ledger. Raises :class:`UnknownWorkflowError` if none was set."""
        ledger = self.backend.get(workflow_id)
        if ledger is None:
            known = ", ".join(led.workflow_id for led in self.backend.ledgers()[:10])
            msg = (
                f"no ledger for workflow {workflow_id!r}; create one with "
                f"budgets.set({workflow_id!r}, ceiling=...) (known: {known or 'none'})"
            )
            raise UnknownWorkflowError(msg, workflow_id=workflow_id)
        return ledger

    def spent(self, workflow_id: str) -> float:
        """C charged to the workflow so far."""
        return self.get(workflow_id).spent

    def remaining(self, workflow_id: str) -> float:
        """Ω − spent − reserved."""
        return self.get(workflow_id).remaining

    def workflows(self) -> list[Ledger]:
        return self.backend.ledgers()

    def history(self, workflow_id: str, limit: int = 1000) -> list[Charge]:
        """Settled charges, oldest first."""
        self.get(workflow_id)
        return self.backend.history(workflow_id, limit)

    def reset(self, workflow_id: str) -> Ledger:
        """Zero the spend (the ceiling stays)."""
        ledger = self.backend.reset(workflow_id)
        self.bus.emit(
            EventType.BUDGET_RESET, workflow_id=workflow_id, source="budget", deleted=False
        )
        return ledger

    def delete(self, workflow_id: str) -> None:
        self.backend.delete(workflow_id)
        self.bus.emit(
            EventType.BUDGET_RESET, workflow_id=workflow_id, source="budget", deleted=True
        )

    # --- reservations ----------------------------------------------------------------------

    def open(self, workflow_id: str, tokens_in: int, max_out: int, tier: str) -> Reservation:
        """Reserve ``w_in·tokens_in + w_out·max_out`` (or what is left, if at least one output
        token fits) before dispatching to ``tier``. Call :meth:`Reservation.settle` after.

        Raises
        ------
        BudgetExceededError
            If not even the prompt and one output token fit under Ω; nothing is reserved.
        UnknownWorkflowError
            If the workflow has no ledger.
        """
        if tokens_in < 0 or max_out < 1:
            msg = f"need tokens_in >= 0 and max_out >= 1, got {tokens_in}, {max_out}"
            raise ValueError(msg)
        record = ReservationRecord(
            reservation_id=uuid.uuid4().hex,
            workflow_id=workflow_id,
            tier=tier,
            granted=self.cost(tokens_in, max_out),
            pid=os.getpid(),
            host=socket.gethostname(),
            created=time.time(),
        )
        minimum = self.cost(tokens_in, 1)
        try:
            grant = self.backend.reserve(record, minimum)
        except BudgetExceededError:
            self.bus.emit(
                EventType.BUDGET_EXCEEDED,
                workflow_id=workflow_id,
                source="budget",
                tier=tier,
                stage="reserve",
                requested=minimum,
                granted=0.0,
                consumed=0.0,
            )
            raise
        record = record.model_copy(update={"granted": grant})
        self.bus.emit(
            EventType.BUDGET_RESERVED,
            workflow_id=workflow_id,
            source="budget",
            tier=tier,
            granted=grant,
            wanted=self.cost(tokens_in, max_out),
        )
        return Reservation(self, record, estimated_in=tokens_in)

    @contextmanager
    def reserve(
        self, workflow_id: str, tokens_in: int, max_out: int, tier: str
    ) -> Iterator[Reservation]:
        """:meth:`open` as a context manager that always settles, even on error."""
        res = self.open(workflow_id, tokens_in, max_out, tier)
        try:
            yield res
        finally:
            res.settle()

    def record(
        self, workflow_id: str, tier: str, tokens_in: int = 0, tokens_out: int = 0, note: str = ""
    ) -> Ledger:
        """Charge consumption that needed no reservation (a human's answer, an import)."""
        self.get(workflow_id)
        record = ReservationRecord(
            reservation_id=uuid.uuid4().hex,
            workflow_id=workflow_id,
            tier=tier,
            granted=0.0,
            pid=os.getpid(),
            host=socket.gethostname(),
            created=time.time(),
        )
        res = Reservation(self, record)
        res.tokens_in, res.tokens_out = tokens_in, tokens_out
        ledger = res.settle(note)
        assert ledger is not None  # a new reservation settles
        return ledger

    def _recover_orphans(self) -> None:
        """Settle reservations left by crashed processes at their last checkpoint (each once,
        even when several processes recover at the same time)."""
        self.backend.recover_orphans()

    def close(self) -> None:
        self.backend.close()

    def __repr__(self) -> str:
        return (
            f"<BudgetCage backend={type(self.backend).__name__} "
            f"C={self.weight_in:g}·T_in+{self.weight_out:g}·T_out>"
        )

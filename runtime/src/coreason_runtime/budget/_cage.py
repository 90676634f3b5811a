"""The BudgetCage: per-workflow ceilings Ω, leases that grow as tokens are consumed.

A request's cost is C = w_in·T_in + w_out·T_out (default w_in = 1, w_out = 3). Before a tier is
called, the cage leases the prompt and one chunk of output (``lease_tokens``); while the tier
runs, the lease (a :class:`Reservation`, the tier's ``Meter``) grows chunk by chunk in atomic
steps of the ledger store, so concurrent requests never together hold more than Ω. A request
whose next chunk does not fit waits a bounded time (``lease_wait``) for leases in flight to
settle, and is cut off with exactly what it consumed charged only when the room does not
come. Settling releases the grant and adds what was really consumed, in one atomic step.
``lease_tokens=None, lease_wait=0`` is the older scheme: the worst case reserved up front,
refused at once.
"""

from __future__ import annotations

import math
import os
import socket
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
from coreason_runtime._signals import interrupts_deferred
from coreason_runtime.budget._lease import Releases, Reservation
from coreason_runtime.budget._memory import MemoryLedgerBackend
from coreason_runtime.budget._models import Charge, Ledger, LedgerBackend, ReservationRecord
from coreason_runtime.budget._sqlite import SQLiteLedgerBackend

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator

__all__ = ["DEFAULT_WORKFLOW", "BudgetCage", "Reservation"]

DEFAULT_WORKFLOW = "default"
_EPS = 1e-9


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool):  # True is an int to Python, never a cost to a user
        msg = f"{name} must be a number, got {value!r}"
        raise InvalidCeilingError(msg)
    try:
        number = float(value)
    except (TypeError, ValueError) as e:
        msg = f"{name} must be a number, got {value!r}"
        raise InvalidCeilingError(msg) from e
    if not math.isfinite(number) or number <= 0:
        msg = f"{name} must be a positive finite number, got {value!r}"
        raise InvalidCeilingError(msg)
    return number


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
    lease_tokens:
        Output tokens a lease is granted at a time (its first chunk, and each growth);
        ``None`` reserves the worst case (``max_tokens``) up front and never grows.
    lease_wait:
        The longest a request waits, in all, for leases in flight to give room back before
        it is refused or cut off (0: at once). It is cut off sooner when no lease in flight
        could give any back.
    """

    def __init__(
        self,
        backend: LedgerBackend | None = None,
        bus: EventBus | None = None,
        *,
        weight_in: float = 1.0,
        weight_out: float = 3.0,
        lease_tokens: int | None = 16,
        lease_wait: float = 30.0,
    ) -> None:
        self.backend: LedgerBackend = backend if backend is not None else MemoryLedgerBackend()
        self.bus = bus if bus is not None else EventBus()
        self.weight_in = _positive("weight_in", weight_in)
        self.weight_out = _positive("weight_out", weight_out)
        if lease_tokens is not None and lease_tokens < 1:
            msg = f"lease_tokens must be >= 1 or None, got {lease_tokens!r}"
            raise ConfigurationError(msg)
        if not math.isfinite(lease_wait) or lease_wait < 0:
            msg = f"lease_wait must be a finite number of seconds >= 0, got {lease_wait!r}"
            raise ConfigurationError(msg)
        self.lease_tokens = lease_tokens
        self.lease_wait = float(lease_wait)
        self.releases = Releases()
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
        return cls(
            backend,
            rt.bus,
            weight_in=cfg.weight_in,
            weight_out=cfg.weight_out,
            lease_tokens=cfg.lease_tokens,
            lease_wait=cfg.lease_wait,
        )

    @property
    def leasing(self) -> bool:
        """Whether grants grow as tokens are consumed (else the worst case is reserved)."""
        return self.lease_tokens is not None

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
        self.releases.notify()  # a raised ceiling is room for requests waiting on it
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
        """Lease the prompt and the first chunk of output (at most ``max_out`` tokens) before
        dispatching to ``tier``; the lease grows as the tier consumes. Call
        :meth:`Reservation.settle` after.

        Waits up to ``lease_wait`` for leases in flight to settle when the prompt and one
        output token do not fit (and one of them could give room back); the grant is what is
        left when that is less than the chunk.

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
        first = max_out if self.lease_tokens is None else min(max_out, self.lease_tokens)
        record = ReservationRecord(
            reservation_id=uuid.uuid4().hex,
            workflow_id=workflow_id,
            tier=tier,
            granted=self.cost(tokens_in, first),
            pid=os.getpid(),
            host=socket.gethostname(),
            created=time.time(),
        )
        reservation = self._admit(record, self.cost(tokens_in, 1), tokens_in, max_out)
        try:  # a Ctrl-C before the caller holds the lease: settle it here
            with interrupts_deferred():
                self.bus.emit(
                    EventType.BUDGET_RESERVED,
                    workflow_id=workflow_id,
                    source="budget",
                    tier=tier,
                    granted=reservation.granted,
                    wanted=self.cost(tokens_in, max_out),
                )
        except BaseException:
            reservation.settle(note="interrupted")
            raise
        return reservation

    def _admit(
        self, record: ReservationRecord, minimum: float, tokens_in: int, max_out: int
    ) -> Reservation:
        """Reserve ``record``, waiting for room while a lease in flight could give some back.

        A Ctrl-C inside the ledger's bookkeeping is held until it ends; if it then stops the
        caller before it holds the lease, the lease is settled here (the wait for room stays
        interruptible: nothing is held while waiting).
        """
        deadline = time.monotonic() + self.lease_wait
        last_try = False
        while True:
            seen = self.releases.generation
            lease: Reservation | None = None
            try:
                with interrupts_deferred():
                    grant = self.backend.reserve(record, minimum)
                    granted = record.model_copy(update={"granted": grant})
                    lease = Reservation(self, granted, estimated_in=tokens_in, limit_out=max_out)
            except BudgetExceededError:
                if last_try:
                    self.bus.emit(
                        EventType.BUDGET_EXCEEDED,
                        workflow_id=record.workflow_id,
                        source="budget",
                        tier=record.tier,
                        stage="reserve",
                        requested=minimum,
                        granted=0.0,
                        consumed=0.0,
                    )
                    raise
            except BaseException:
                if lease is not None:
                    lease.settle(note="interrupted")
                raise
            else:
                return lease
            left = deadline - time.monotonic()
            if left > 0 and self.backend.releasable(record.workflow_id) > _EPS:
                self.releases.wait(seen, left)
            else:  # nothing in flight can give room back: one decisive try, then refuse
                last_try = True

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

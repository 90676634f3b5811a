"""Budget leases: a request's grant grows chunk by chunk as it consumes, never past Ω.

A lease starts with the prompt and one chunk of output. When the next token (or a streamed
chunk) would cross the grant, the lease grows by another chunk in one atomic step of the
ledger store. If the room is not there, the lease gives its unused grant back, marks itself
waiting and waits a bounded time for leases in flight to settle; it is cut off at once when
no lease in flight could give anything back (every other one is waiting too, or there is
none), so a request is refused only when what it needs does not fit.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from coreason_runtime._events import EventType
from coreason_runtime._exceptions import BudgetExceededError
from coreason_runtime._signals import interrupts_deferred
from coreason_runtime.budget._models import Charge, Ledger, ReservationRecord

if TYPE_CHECKING:
    from coreason_runtime.budget._cage import BudgetCage

__all__ = ["Releases", "Reservation"]

_CHECKPOINT_EVERY_S = 0.5
_EPS = 1e-9


class Releases:
    """Wakes leases waiting for room when one in this process settles or gives room back.

    Every release bumps a generation; a waiter sleeps until the generation it saw changes or
    ``poll`` seconds pass (releases by other processes are seen by asking the store again).
    """

    def __init__(self, poll: float = 0.05) -> None:
        self.poll = poll
        self._cv = threading.Condition()
        self._generation = 0

    @property
    def generation(self) -> int:
        return self._generation

    def notify(self) -> None:
        """Room was released: wake every waiter."""
        with self._cv:
            self._generation += 1
            self._cv.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Sleep until a release after generation ``seen``, at most ``min(timeout, poll)``."""
        with self._cv:
            self._cv.wait_for(lambda: self._generation != seen, max(min(timeout, self.poll), 0))


class Reservation:
    """A lease held for one request; the tier's meter. Thread-safe.

    Use :meth:`charge` as tokens are consumed; a tier that can stop before consuming calls
    :meth:`check` (or :meth:`ensure`, which can be interrupted) first. Either grows the lease
    when needed, waiting a bounded time for room. :meth:`settle` (or leaving the ``with``
    block of :meth:`BudgetCage.reserve`) writes the real consumption to the ledger once.
    """

    def __init__(
        self,
        cage: BudgetCage,
        record: ReservationRecord,
        estimated_in: int = 0,
        limit_out: int | None = None,
    ) -> None:
        self._cage = cage
        self.record = record
        self.estimated_in = estimated_in
        self.limit_out = limit_out
        self.granted = record.granted
        self.tokens_in = 0
        self.tokens_out = 0
        self._lock = threading.Lock()
        self._settled = False
        self._last_checkpoint = 0.0  # the first charge (the prompt) is made durable at once
        self.exceeded = False
        self.waited = 0.0  # seconds spent waiting for room, over the lease's life

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
        """The most output tokens this request could still be granted, keeping room for prompt
        tokens estimated but not yet charged (a stream learns its prompt size at the end).

        A lease counts everything under Ω not yet spent by settled requests (leases in flight
        may give theirs back); a worst-case reservation counts its own grant only.
        """
        pending_in = max(self.estimated_in - self.tokens_in, 0)
        room = self.granted - self.consumed
        if self._cage.leasing:
            ledger = self._cage.backend.get(self.workflow_id)
            ceiling = ledger.ceiling if ledger is not None else None
            spent = ledger.spent if ledger is not None else 0.0
            room = math.inf if ceiling is None else ceiling - spent - self.consumed
        left = room - self._cage.weight_in * pending_in
        fits = math.floor(left / self._cage.weight_out + _EPS) if math.isfinite(left) else 1 << 30
        if self.limit_out is not None:
            fits = min(fits, self.limit_out - self.tokens_out)
        return max(fits, 0)

    # --- the Meter protocol --------------------------------------------------------------------

    def ensure(
        self,
        tokens_in: int = 0,
        tokens_out: int = 0,
        *,
        interrupted: Callable[[], bool] | None = None,
    ) -> bool:
        """Make the grant cover consuming this much more, growing the lease if needed.

        Waits (bounded) for leases in flight to settle when the room is not there. Call it
        outside any lock other requests need to finish (the model lock).

        Returns
        -------
        bool
            True when covered; False if ``interrupted()`` turned true while waiting.

        Raises
        ------
        BudgetExceededError
            If the room did not come: no lease in flight could give any back, or the wait
            bound passed. Nothing was consumed.
        """
        target = self._needs(self.tokens_in + tokens_in, self.tokens_out + tokens_out)
        return self._cover(target, interrupted)

    def check(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        """Raise :class:`BudgetExceededError` if consuming this much more cannot be granted.

        A tier that can stop *before* consuming (a local decoder) calls this first, so it never
        overshoots; a stream that learns of tokens only after receiving them calls
        :meth:`charge` alone and overshoots by at most that chunk.
        """
        self.ensure(tokens_in, tokens_out)

    def charge(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        """Record consumed tokens, growing the lease to cover them; raise
        :class:`BudgetExceededError` if it cannot. The tokens stay recorded: they were
        consumed."""
        if tokens_in < 0 or tokens_out < 0:
            msg = f"token counts must be non-negative, got in={tokens_in}, out={tokens_out}"
            raise ValueError(msg)
        self._record(self.tokens_in + tokens_in, self.tokens_out + tokens_out)

    def correct(self, tokens_in: int, tokens_out: int) -> None:
        """Replace the counts so far by exact totals (a server's own usage), up or down.

        Raises :class:`BudgetExceededError`, the totals recorded, if they cannot be granted.
        """
        if tokens_in < 0 or tokens_out < 0:
            msg = f"token counts must be non-negative, got in={tokens_in}, out={tokens_out}"
            raise ValueError(msg)
        self._record(tokens_in, tokens_out)

    def _record(self, tokens_in: int, tokens_out: int) -> None:
        with self._lock:
            if self._settled:
                msg = "charge after settle: the reservation is closed"
                raise BudgetExceededError(msg, workflow_id=self.workflow_id, tier=self.tier)
            self.tokens_in, self.tokens_out = tokens_in, tokens_out
            needs = self._needs(tokens_in, tokens_out)
            now = time.monotonic()
            due = now - self._last_checkpoint > _CHECKPOINT_EVERY_S
            if due:
                self._last_checkpoint = now
        if due:
            self.checkpoint()
        if needs > self.granted + _EPS:
            self._cover(needs, None)

    # --- growing -------------------------------------------------------------------------------

    def _needs(self, tokens_in: int, tokens_out: int) -> float:
        """The grant these counts need: their C, and room for the prompt tokens estimated but
        not yet charged (a stream's prompt is reported at its end)."""
        pending_in = max(self.estimated_in - tokens_in, 0)
        return self._cage.cost(tokens_in, tokens_out) + self._cage.weight_in * pending_in

    def _cover(self, target: float, interrupted: Callable[[], bool] | None) -> bool:
        """Grow the grant to at least ``target``, waiting for room; raise when it cannot."""
        if target <= self.granted + _EPS:
            return True
        if not self._cage.leasing:  # the worst case was reserved up front: nothing to grow
            self._raise(target)
        releases = self._cage.releases
        started, before = time.monotonic(), self.waited
        deadline = started + self._cage.lease_wait
        while True:
            seen = releases.generation
            growth = self._grow(target)
            self.waited = before + time.monotonic() - started
            if growth is None:
                return True
            gave_back, releasable = growth
            if gave_back:
                releases.notify()  # our unused grant is room for someone else now
            if releasable <= _EPS or time.monotonic() >= deadline:
                self._raise(target)
            if interrupted is not None and interrupted():
                return False
            releases.wait(seen, deadline - time.monotonic())

    def _grow(self, target: float) -> tuple[bool, float] | None:
        """One atomic grow; None when covered, else (gave room back, releasable by others)."""
        with self._lock:
            if target <= self.granted + _EPS:
                return None
            need = target - self.granted
            want = max(need, min(self._ahead(), self._cap() - self.granted))
            record = self.record.model_copy(
                update={
                    "granted": self.granted,
                    "consumed": self.consumed,
                    "tokens_in": self.tokens_in,
                    "tokens_out": self.tokens_out,
                }
            )
        with interrupts_deferred():  # the store's grant and ours change together
            growth = self._cage.backend.grow(record, want, need)
            with self._lock:
                before, self.granted = self.granted, growth.granted
                self.record = self.record.model_copy(update={"granted": growth.granted})
        if growth.grown:
            return None
        return growth.granted < before - _EPS, growth.releasable

    def _ahead(self) -> float:
        """The C of one chunk of output: what a lease asks for when it grows."""
        return self._cage.cost(0, self._cage.lease_tokens or 0)

    def _cap(self) -> float:
        """The most this request can use: its prompt and ``limit_out`` output tokens."""
        if self.limit_out is None:
            return math.inf
        return self._cage.cost(max(self.estimated_in, self.tokens_in), self.limit_out)

    def _raise(self, would_be: float) -> NoReturn:
        self.exceeded = True
        ledger = self._cage.backend.get(self.workflow_id)
        waited = f", after waiting {self.waited:.2f}s for room" if self.waited > 0.01 else ""
        msg = (
            f"workflow {self.workflow_id!r}: ceiling Ω={ledger.ceiling if ledger else None} "
            f"reached on tier {self.tier!r} after {self.tokens_in} tokens in and "
            f"{self.tokens_out} out (C={self.consumed:g}, this request's grant "
            f"{self.granted:g}{waited}); request cut off"
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

    # --- settling ------------------------------------------------------------------------------

    def settle(self, note: str = "") -> Ledger | None:
        """Release the grant and charge what was consumed; idempotent.

        A Ctrl-C arriving meanwhile is delivered once the ledger is written.
        """
        with interrupts_deferred():
            with self._lock:
                if self._settled:
                    return None
                self._settled = True
            try:
                return self._write(note)
            finally:
                self._cage.releases.notify()

    def checkpoint(self) -> None:
        """Record the consumption so far durably, so that if this process dies the orphaned
        lease is charged up to here (:meth:`charge` does it every 0.5 s, a growth too)."""
        self._cage.backend.checkpoint(
            self.record.model_copy(
                update={
                    "granted": self.granted,
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

    def __repr__(self) -> str:
        return (
            f"<Reservation {self.workflow_id!r} tier={self.tier!r} granted={self.granted:g} "
            f"consumed={self.consumed:g}>"
        )

"""The growth budget: a runtime-owned gate that every new RBF unit must be granted by."""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

from coreason_runtime._events import EventType
from coreason_runtime._exceptions import InvalidBudgetError

if TYPE_CHECKING:
    from coreason_runtime._events import EventBus

__all__ = ["GrowthBudget"]


def _check_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{what} must be a non-negative integer, got {value!r}"
        raise InvalidBudgetError(msg)
    if value < 0:
        msg = f"{what} must be a non-negative integer, got {value}"
        raise InvalidBudgetError(msg)
    return value


class GrowthBudget:
    """How many more units a network may add; owned by the runtime, not by the network.

    A network calls :meth:`request` before it adds a unit and adds it only when the budget
    grants it. The runtime (a person at the notebook, the Coordinator, a controller) may
    :meth:`lower` the budget from any thread while the network runs; it can never be raised
    above its initial limit except by :meth:`refund`, which pruning uses when ``recycle`` is on.
    A refusal publishes :attr:`EventType.RBF_GATED` on the bus.

    Parameters
    ----------
    limit:
        Units that may be added in all; ``None`` for no cap (grants are still counted).
    bus:
        Where refusals and changes are published; ``None`` publishes nothing.
    name:
        Identifies the budget in events (``source``).
    recycle:
        When true, a pruned unit gives its slot back (:meth:`refund`), so the cap bounds the
        live size; when false the cap bounds the number of units ever added.

    Raises
    ------
    InvalidBudgetError
        ``limit`` is negative or not an integer.
    """

    def __init__(
        self,
        limit: int | None = None,
        *,
        bus: EventBus | None = None,
        name: str = "grbf",
        recycle: bool = False,
    ) -> None:
        self.limit = None if limit is None else _check_count(limit, "growth_budget")
        self._remaining: float = math.inf if limit is None else float(limit)
        # what a refund may restore at most: lowering moves it down, so pruning never reopens
        # growth the runtime has closed
        self._cap = self._remaining
        self._lock = threading.Lock()
        self.bus = bus
        self.name = name
        self.recycle = recycle
        self.granted = 0
        self.refused = 0

    @property
    def remaining(self) -> float:
        """Units that may still be added (``math.inf`` when uncapped)."""
        return self._remaining

    def request(self, t: int | None = None) -> bool:
        """Ask for one unit. Returns whether it was granted; a refusal publishes RBF_GATED."""
        with self._lock:
            if self._remaining > 0:
                self._remaining -= 1
                self.granted += 1
                return True
            self.refused += 1
            refused = self.refused
        if self.bus is not None:
            self.bus.emit(
                EventType.RBF_GATED,
                source=self.name,
                t=t,
                remaining=0,
                granted=self.granted,
                refused=refused,
                reason="budget exhausted",
            )
        return False

    def lower(self, by: int) -> float:
        """Take ``by`` units away from what remains (never below 0). Returns what remains.

        Raises
        ------
        InvalidBudgetError
            ``by`` is negative or not an integer; nothing changes.
        """
        by = _check_count(by, "lower(by)")
        with self._lock:
            self._remaining = max(0.0, self._remaining - by)
            self._cap = max(0.0, self._cap - by)
            remaining = self._remaining
        self._announce("lowered", remaining)
        return remaining

    def lower_to(self, remaining: int) -> float:
        """Cap what remains at ``remaining`` (a higher value leaves it as it is).

        Raises
        ------
        InvalidBudgetError
            ``remaining`` is negative or not an integer; nothing changes.
        """
        remaining = _check_count(remaining, "lower_to(remaining)")
        with self._lock:
            self._remaining = min(self._remaining, float(remaining))
            self._cap = min(self._cap, float(remaining))
            now = self._remaining
        self._announce("lowered", now)
        return now

    def refund(self, n: int) -> float:
        """Give back ``n`` slots after pruning, if ``recycle`` is on. Returns what remains."""
        n = _check_count(n, "refund(n)")
        with self._lock:
            if self.recycle:
                self._remaining = min(self._cap, self._remaining + n)
            return self._remaining

    def _announce(self, reason: str, remaining: float) -> None:
        if self.bus is not None:
            self.bus.emit(
                EventType.RBF_GATED,
                source=self.name,
                t=None,
                remaining=remaining,
                granted=self.granted,
                refused=self.refused,
                reason=reason,
            )

    def __repr__(self) -> str:
        return (
            f"GrowthBudget(name={self.name!r}, limit={self.limit}, "
            f"remaining={self._remaining}, granted={self.granted}, refused={self.refused})"
        )

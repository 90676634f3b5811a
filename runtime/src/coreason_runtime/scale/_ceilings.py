"""Raising a ceiling from a suspended request: each change applied once, none lost to a race.

Several suspended requests of one workflow may be topped up at once, on several workers, and
an activity may run twice (its worker died after applying the change). So a change is applied
under a lock shared by the deployment (Redis), and its resulting ceiling is written under the
change's id *before* it is set: a second run of the same change sets that same ceiling again
instead of adding its amount twice.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from coreason_runtime.scale._control_bridge import deployment_prefix

if TYPE_CHECKING:
    from coreason_runtime.budget import BudgetCage

__all__ = ["CeilingChanges"]

_LOCK_S = 10.0  # a holder that dies releases the lock after this long
_KEEP_S = 30 * 24 * 3600  # how long an applied change is remembered


class CeilingChanges:
    """Apply ``raise_ceiling`` / ``top_up`` changes to ``budgets`` exactly once each.

    Parameters
    ----------
    budgets:
        The (shared) ledgers.
    redis_url, deployment:
        Where the lock and the applied changes live; without Redis, a lock of this process.
    """

    def __init__(
        self, budgets: BudgetCage, redis_url: str | None = None, deployment: str = "default"
    ) -> None:
        self.budgets = budgets
        self.prefix = deployment_prefix(deployment)
        self._local = threading.Lock()
        self._applied: dict[str, float | None] = {}
        self._r: Any = None
        if redis_url:
            import redis

            self._r = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5.0)

    def _lock(self, workflow_id: str) -> AbstractContextManager[Any]:
        if self._r is None:
            return nullcontext()
        lock: AbstractContextManager[Any] = self._r.lock(
            f"{self.prefix}:ceiling-lock:{workflow_id}", timeout=_LOCK_S, blocking_timeout=60
        )
        return lock

    def apply(self, workflow_id: str, change_id: str, by: str, amount: float) -> float | None:
        """Apply change ``change_id`` (``by`` ``"top_up"``: add ``amount``; else raise the
        ceiling to ``amount``, never lowering it); returns the ceiling it set. A workflow
        without a ceiling keeps none."""
        with self._local, self._lock(workflow_id):
            target = self._target(change_id)
            if target is None:
                ceiling = self.budgets.get(workflow_id).ceiling
                if ceiling is None:
                    return None
                new = ceiling + amount if by == "top_up" else max(ceiling, amount)
                target = self._remember(change_id, new)
            self.budgets.set(workflow_id, ceiling=target)
            return target

    def _target(self, change_id: str) -> float | None:
        if self._r is None:
            return self._applied.get(change_id)
        raw = self._r.get(f"{self.prefix}:ceiling-change:{change_id}")
        return None if raw is None else float(raw)

    def _remember(self, change_id: str, ceiling: float) -> float:
        if self._r is None:
            self._applied[change_id] = ceiling
        else:
            key = f"{self.prefix}:ceiling-change:{change_id}"
            self._r.set(key, repr(ceiling), ex=int(_KEEP_S))
        return ceiling

    def close(self) -> None:
        if self._r is not None:
            self._r.close()

"""CS-WIF: a what-if gate that lets an expensive call run only if a cheap dry run says it pays."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from coreason_runtime._events import EventType
from coreason_runtime._exceptions import ConfigurationError

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator
    from coreason_runtime._events import EventBus

__all__ = ["Decision", "Prediction", "WhatIfGate"]

T = TypeVar("T")


@dataclass(frozen=True)
class Prediction:
    """What a dry run predicts an expensive call returns (``gain``) and costs (``cost``).

    Both are in the caller's units (error removed, cell-updates, seconds, dollars), used
    consistently with the gate's thresholds. ``detail`` carries anything worth logging.
    """

    gain: float
    cost: float
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Gain per unit cost (``inf`` for a free call with positive gain)."""
        if self.cost <= 0:
            return math.inf if self.gain > 0 else 0.0
        return self.gain / self.cost


@dataclass(frozen=True)
class Decision(Generic[T]):
    """The gate's verdict on one call, with the prediction it was based on."""

    name: str
    allowed: bool
    prediction: Prediction
    reason: str
    dry_run_s: float
    region: Any = None
    value: T | None = None


class WhatIfGate:
    """Refuse an expensive call unless a bounded dry run predicts it clears the thresholds.

    A call is allowed when ``gain >= min_gain`` and ``gain / cost >= min_ratio`` and
    ``cost <= max_cost``. Every decision is published (``whatif.allowed`` /
    ``whatif.refused``) with its prediction, and refusals are kept in :attr:`refusals`.

    Args:
        min_gain: smallest predicted gain worth paying for.
        min_ratio: smallest predicted gain per unit of cost.
        max_cost: largest predicted cost allowed at all.
        bus: where decisions are published (none: only kept in memory).
        workflow_id, source: stamped on the events.
    """

    def __init__(
        self,
        *,
        min_gain: float = 0.0,
        min_ratio: float = 0.0,
        max_cost: float = math.inf,
        bus: EventBus | None = None,
        workflow_id: str | None = None,
        source: str = "sim.whatif",
    ) -> None:
        for label, v in (("min_gain", min_gain), ("min_ratio", min_ratio)):
            if not math.isfinite(v):
                msg = f"{label} must be finite; got {v}"
                raise ConfigurationError(msg)
        if not max_cost > 0:
            msg = f"max_cost must be positive; got {max_cost}"
            raise ConfigurationError(msg)
        self.min_gain, self.min_ratio, self.max_cost = min_gain, min_ratio, max_cost
        self.bus, self.workflow_id, self.source = bus, workflow_id, source
        self.decisions: list[Decision[Any]] = []

    @classmethod
    def for_runtime(cls, rt: Coordinator, **kwargs: Any) -> WhatIfGate:
        """A gate publishing on the runtime's bus."""
        return cls(bus=rt.bus, **kwargs)

    @property
    def refusals(self) -> list[Decision[Any]]:
        return [d for d in self.decisions if not d.allowed]

    def judge(self, prediction: Prediction) -> tuple[bool, str]:
        """Apply the thresholds to a prediction: ``(allowed, reason)``."""
        g, c = prediction.gain, prediction.cost
        if not (math.isfinite(g) and math.isfinite(c)):
            return False, f"prediction is not finite (gain={g}, cost={c})"
        if g < self.min_gain:
            return False, f"predicted gain {g:.3g} < min_gain {self.min_gain:.3g}"
        if prediction.ratio < self.min_ratio:
            return False, f"gain/cost {prediction.ratio:.3g} < min_ratio {self.min_ratio:.3g}"
        if c > self.max_cost:
            return False, f"predicted cost {c:.3g} > max_cost {self.max_cost:.3g}"
        return True, "predicted gain clears the thresholds"

    def decide(
        self,
        name: str,
        dry_run: Callable[[], Prediction] | Prediction,
        *,
        region: Any = None,
        workflow_id: str | None = None,
    ) -> Decision[Any]:
        """Run ``dry_run`` (or take a prediction already made), judge the prediction, log and
        publish the decision (stamped with ``workflow_id``, else the gate's own)."""
        t0 = time.perf_counter()
        prediction = dry_run() if callable(dry_run) else dry_run
        elapsed = time.perf_counter() - t0
        allowed, reason = self.judge(prediction)
        decision: Decision[Any] = Decision(name, allowed, prediction, reason, elapsed, region)
        self.decisions.append(decision)
        if self.bus is not None:
            self.bus.emit(
                EventType.WHATIF_ALLOWED if allowed else EventType.WHATIF_REFUSED,
                workflow_id=workflow_id or self.workflow_id,
                source=self.source,
                name=name,
                allowed=allowed,
                predicted_gain=prediction.gain,
                predicted_cost=prediction.cost,
                reason=reason,
                region=region,
                dry_run_s=elapsed,
                detail=prediction.detail,
            )
        return decision

    def run(
        self,
        name: str,
        dry_run: Callable[[], Prediction],
        call: Callable[[], T],
        *,
        region: Any = None,
    ) -> Decision[T]:
        """Decide, then run ``call`` only if allowed; the decision carries its value."""
        d = self.decide(name, dry_run, region=region)
        if not d.allowed:
            return d
        value = call()
        done: Decision[T] = Decision(
            d.name, True, d.prediction, d.reason, d.dry_run_s, d.region, value
        )
        self.decisions[-1] = done
        return done

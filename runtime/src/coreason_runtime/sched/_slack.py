"""CSS: hard constraints report slacks; fund the action that lexicographically raises the minimum.

A constraint's slack is >= 0 when it holds and its size says how much room is left (normalised
by the constraint's ``scale`` so units, side conditions and deadlines compare). Each candidate
action predicts the slacks it will leave; the scheduler funds the one whose predicted slack
vector, sorted ascending, is lexicographically largest (max-min, then the second smallest...).
Constraints already violated that no candidate action can raise at all (a missed deadline:
running the job only keeps its slack where it is) are *lost*: they are reported and left out
of the objective, so effort is not poured into hopeless ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from coreason_runtime._events import EventBus, EventType
from coreason_runtime._exceptions import ConstraintError

__all__ = [
    "Constraint",
    "DeadlineConstraint",
    "SideCondition",
    "SlackAction",
    "SlackScheduler",
    "TypeConstraint",
    "UnitConstraint",
]


class Constraint(Protocol):
    """A hard constraint: ``slack()`` >= 0 holds, < 0 violated."""

    name: str

    def slack(self) -> float: ...


class UnitConstraint:
    """``value() <= bound`` (or ``>=``) in physical units, through pint.

    A value whose dimensionality differs from the bound's violates the constraint outright
    (slack ``-inf``): a units error is not a matter of degree. Slack is relative to ``bound``.
    """

    def __init__(
        self, name: str, value: Callable[[], Any], bound: Any, *, relation: str = "<="
    ) -> None:
        import pint

        self._ureg = pint.get_application_registry()  # type: ignore[no-untyped-call]  # pint is untyped
        if isinstance(bound, str):
            try:
                bound = self._ureg.Quantity(bound)
            except (pint.errors.PintError, ValueError, AttributeError) as e:
                msg = f"constraint {name!r}: cannot read bound {bound!r} as a quantity"
                raise ConstraintError(msg) from e
        if not hasattr(bound, "dimensionality") or float(bound.magnitude) == 0.0:
            msg = f"constraint {name!r}: bound must be a non-zero pint quantity, got {bound!r}"
            raise ConstraintError(msg)
        if relation not in ("<=", ">="):
            msg = f"constraint {name!r}: relation must be '<=' or '>=', got {relation!r}"
            raise ConstraintError(msg)
        self.name = name
        self.value = value
        self.bound = bound
        self.relation = relation

    def slack(self) -> float:
        import pint

        v = self.value()
        if isinstance(v, str):
            v = self._ureg.Quantity(v)
        try:
            v = v.to(self.bound.units)
        except (pint.errors.DimensionalityError, AttributeError):
            return -math.inf
        b = float(self.bound.magnitude)
        diff = b - float(v.magnitude) if self.relation == "<=" else float(v.magnitude) - b
        return diff / abs(b)


class TypeConstraint:
    """``value()`` is an instance of ``type_``: slack 1 when it is, -inf when not."""

    def __init__(self, name: str, value: Callable[[], Any], type_: type | tuple[type, ...]):
        self.name, self.value, self.type_ = name, value, type_

    def slack(self) -> float:
        return 1.0 if isinstance(self.value(), self.type_) else -math.inf


class SideCondition:
    """A side condition with a margin: ``margin()`` >= 0 holds (e.g. a Jacobian's det - eps)."""

    def __init__(self, name: str, margin: Callable[[], float], *, scale: float = 1.0) -> None:
        if scale <= 0:
            msg = f"constraint {name!r}: scale must be positive, got {scale}"
            raise ConstraintError(msg)
        self.name, self.margin, self.scale = name, margin, scale

    def slack(self) -> float:
        return float(self.margin()) / self.scale


class DeadlineConstraint:
    """Finish by ``deadline``: slack = deadline - now - expected remaining work (seconds)."""

    def __init__(
        self,
        name: str,
        deadline: float,
        remaining: Callable[[], float],
        *,
        clock: Callable[[], float] = time.monotonic,
        scale: float = 1.0,
    ) -> None:
        if scale <= 0:
            msg = f"constraint {name!r}: scale must be positive, got {scale}"
            raise ConstraintError(msg)
        self.name, self.deadline, self.remaining = name, deadline, remaining
        self.clock, self.scale = clock, scale

    def slack(self) -> float:
        return (self.deadline - self.clock() - float(self.remaining())) / self.scale


@dataclass
class SlackAction:
    """Something the scheduler may fund: tighten a step, re-derive a lemma, refine a region.

    ``predict()`` returns the slack each affected constraint will have afterwards (others are
    assumed unchanged unless ``others`` says by how much they move, e.g. ``-dt`` for time
    spent); ``run()`` does the work.
    """

    name: str
    predict: Callable[[], Mapping[str, float]]
    run: Callable[[], Any] = lambda: None
    cost: float = 1.0
    others: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


class SlackScheduler:
    """Funds, step by step, the action that raises the minimum slack (lexicographic max-min).

    Parameters
    ----------
    constraints:
        The hard constraints; names must be unique.
    bus:
        Where ``SLACK_FUNDED`` events go.
    budget:
        Total cost the scheduler may spend on actions (``None``: unbounded).
    """

    def __init__(
        self,
        constraints: Iterable[Constraint],
        *,
        bus: EventBus | None = None,
        budget: float | None = None,
        workflow_id: str | None = None,
        source: str = "css",
    ) -> None:
        self.constraints: dict[str, Constraint] = {}
        for c in constraints:
            if c.name in self.constraints:
                msg = f"two constraints are named {c.name!r}"
                raise ConstraintError(msg)
            self.constraints[c.name] = c
        self.bus = bus
        self.budget = budget
        self.spent = 0.0
        self.workflow_id = workflow_id
        self.source = source
        self.lost: set[str] = set()

    def slacks(self) -> dict[str, float]:
        """Every constraint's current slack."""
        out: dict[str, float] = {}
        for name, c in self.constraints.items():
            try:
                s = float(c.slack())
            except ConstraintError:
                raise
            except Exception as e:
                msg = f"constraint {name!r} could not compute its slack: {e}"
                raise ConstraintError(msg, workflow_id=self.workflow_id) from e
            out[name] = -math.inf if math.isnan(s) else s
        return out

    def choose(
        self, actions: Sequence[SlackAction], current: Mapping[str, float] | None = None
    ) -> SlackAction | None:
        """The affordable action whose predicted slacks are lexicographically max-min best."""
        current = dict(current if current is not None else self.slacks())
        left = math.inf if self.budget is None else self.budget - self.spent
        affordable = [a for a in actions if a.cost <= left]
        if not affordable:
            return None
        predictions = [(a, self._predicted(a, current)) for a in affordable]
        raisable = {n for _, p in predictions for n, s in p.items() if s > current.get(n, s)}
        self.lost = {n for n, s in current.items() if s < 0 and n not in raisable}
        best: tuple[tuple[float, ...], float] | None = None
        chosen: SlackAction | None = None
        for a, pred in predictions:
            vec = tuple(sorted(s for n, s in pred.items() if n not in self.lost))
            key = (vec, -a.cost)
            if best is None or key > best:
                best, chosen = key, a
        return chosen

    @staticmethod
    def _predicted(action: SlackAction, current: Mapping[str, float]) -> dict[str, float]:
        pred = {n: s + action.others for n, s in current.items()}
        predicted = dict(action.predict())
        unknown = sorted(set(predicted) - set(pred))
        if unknown:  # a typo would silently join the max-min objective as a constraint
            msg = f"action {action.name!r} predicts slacks for unknown constraints {unknown}"
            raise ConstraintError(msg)
        pred.update(predicted)
        return pred

    def step(self, actions: Sequence[SlackAction]) -> SlackAction | None:
        """Fund one action: choose it, publish ``SLACK_FUNDED``, run it. ``None`` if none fits."""
        before = self.slacks()
        action = self.choose(actions, before)
        if action is None:
            return None
        self.spent += action.cost
        predicted = self._predicted(action, before)
        if self.bus is not None:
            self.bus.emit(
                EventType.SLACK_FUNDED,
                workflow_id=self.workflow_id,
                source=self.source,
                action=action.name,
                cost=action.cost,
                min_slack_before=min(before.values(), default=math.inf),
                min_slack_predicted=min(predicted.values(), default=math.inf),
                lost=sorted(self.lost),
                slacks_before=before,
            )
        action.run()
        return action

    def run(
        self,
        propose: Callable[[], Sequence[SlackAction]],
        *,
        target: float = 0.0,
        max_steps: int = 100,
    ) -> dict[str, float]:
        """Fund actions from ``propose()`` until every live slack reaches ``target``."""
        for _ in range(max_steps):
            current = self.slacks()
            live = [s for n, s in current.items() if n not in self.lost]
            if live and min(live) >= target:
                break
            if self.step(propose()) is None:
                break
        return self.slacks()

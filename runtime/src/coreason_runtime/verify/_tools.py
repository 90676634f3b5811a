"""Tool tiers: answer one field outright given the rest of the value (a CAS), priced by CPU.

A tool tier is the span tiers' cheapest rung: when a field's span candidates all fail, the
CAS asks the request's own checks to compute the field from the rest of the value (the
derivative of the function field, the roots of the polynomial) and its CPU time is charged
to the workflow like tokens: ``price_per_cpu_second`` C per CPU second, recorded as input
units of tier ``"cas"``.
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from coreason_runtime._exceptions import VerifierError
from coreason_runtime.verify._math import show
from coreason_runtime.verify._run import bounded

if TYPE_CHECKING:
    from coreason_runtime.tensor._types import Meter
    from coreason_runtime.verify._driver import FieldAnswer, FieldAsk

__all__ = ["CasTier", "FieldTier", "format_value"]


class FieldTier(ABC):
    """A tier asked for one field: the interface of tool tiers and of remote field questions.

    :meth:`estimate` says what to reserve before the call (prompt units, output tokens);
    :meth:`answer_field` charges ``meter`` as it works and returns the field's value as JSON
    text, or ``None`` when it has no answer.
    """

    name: str = "field"

    @abstractmethod
    def estimate(self, ask: FieldAsk) -> tuple[int, int]:
        """``(tokens_in, max_out)`` to reserve for answering ``ask``."""

    @abstractmethod
    def answer_field(self, ask: FieldAsk, meter: Meter) -> FieldAnswer | None:
        """The field's value, charging ``meter``; ``None`` if this tier cannot answer."""

    def close(self) -> None:  # noqa: B027  # most field tiers hold nothing
        """Release what the tier holds (the default holds nothing)."""


def _number(expr: Any, integer: bool) -> Any:
    import sympy

    if hasattr(expr, "magnitude"):  # a produced quantity: the number in the asked unit
        expr = expr.magnitude
    value = sympy.sympify(expr)
    if not value.is_number or not value.is_real:
        return None
    if integer:
        return int(value) if value.is_integer else None
    return float(value)


def format_value(produced: Any, schema: dict[str, Any] | None) -> Any:
    """``produced`` (a SymPy object, a quantity, a list) as a JSON value of ``schema``'s type,
    or ``None`` when it cannot be one (a symbolic value for a number field)."""
    kind = (schema or {}).get("type", "string")
    if kind == "array":
        if not isinstance(produced, (list, tuple)):
            return None
        items = (schema or {}).get("items")
        out = [format_value(p, items if isinstance(items, dict) else None) for p in produced]
        return None if any(o is None for o in out) else out
    if isinstance(produced, (list, tuple)):
        return show(produced) if kind == "string" else None
    if kind in ("number", "integer"):
        return _number(produced, kind == "integer")
    if kind == "string":
        return str(produced) if hasattr(produced, "magnitude") else show(produced)
    return None


class CasTier(FieldTier):
    """SymPy as a tier: the request's checks compute the failing field (``Check.produce``).

    Parameters
    ----------
    price_per_cpu_second:
        C charged per CPU second spent computing (1 C per 10 ms by default; the local
        model's C buys roughly 70 ms of CPU per output token on a laptop core).
    timeout:
        The longest one computation may take (it is also bounded by the grant).
    """

    name = "cas"

    def __init__(self, price_per_cpu_second: float = 100.0, timeout: float = 10.0) -> None:
        self.price_per_cpu_second = price_per_cpu_second
        self.timeout = timeout

    def estimate(self, ask: FieldAsk) -> tuple[int, int]:
        # charged as input units (weight 1): reserve a timeout's worth as output room
        worst = math.ceil(self.price_per_cpu_second * min(self.timeout, ask.timeout))
        return 0, max(1, math.ceil(worst / 3))

    def answer_field(self, ask: FieldAsk, meter: Meter) -> FieldAnswer | None:
        from coreason_runtime.verify._driver import FieldAnswer

        started = time.perf_counter()
        limit = min(self.timeout, ask.timeout, 3 * meter.max_out / self.price_per_cpu_second)
        cpu = 0.0
        produced = None
        for check in ask.checks:
            reads = check.reads
            if reads is not None and ask.pointer not in reads:
                continue

            def work(check: Any = check) -> tuple[Any, float]:
                t = time.thread_time()
                try:
                    out = check.produce(ask.value, ask.pointer)
                except Exception:  # SymPy raises many kinds: no answer, not a crash
                    out = None
                return out, time.thread_time() - t

            try:
                produced, spent = bounded(work, max(limit - cpu, 1e-3), f"cas:{check.name}")
            except VerifierError:  # out of time: the CPU it had is still paid for
                produced, spent = None, max(limit - cpu, 0.0)
            cpu += spent
            if produced is not None:
                break
        units = max(1, math.ceil(cpu * self.price_per_cpu_second))
        meter.charge(tokens_in=units)
        value = format_value(produced, ask.schema) if produced is not None else None
        if value is None:
            return None
        return FieldAnswer(
            json.dumps(value, ensure_ascii=False),
            self.name,
            tokens_in=units,
            seconds=time.perf_counter() - started,
        )

    def __repr__(self) -> str:
        return f"CasTier(price_per_cpu_second={self.price_per_cpu_second:g})"

"""Built-in verifiers for physical quantities (pint) and declared invariants over fields."""

from __future__ import annotations

import functools
import operator
import re
import tokenize
from collections.abc import Callable
from typing import Any

from coreason_runtime._exceptions import RequestError
from coreason_runtime.verify._builtins import Arg, Unreadable
from coreason_runtime.verify._json import get_pointer
from coreason_runtime.verify._math import EXACT, read_expr, same, show
from coreason_runtime.verify._types import Check, CheckResult, Failure, as_value, normalise_pointer

__all__ = ["Invariant", "Units", "registry"]

PINT = "pint"


@functools.lru_cache(maxsize=1)
def registry() -> Any:
    """One pint unit registry for every check (building one takes ~0.3 s)."""
    import pint

    return pint.UnitRegistry()


def _quantity(text: Any, unit: str | None) -> Any:
    """A pint quantity from ``"12 J"``, ``"12"`` + ``unit``, or a number + ``unit``."""
    import pint

    ureg = registry()
    if isinstance(text, bool):
        msg = f"{text!r} is not a quantity"
        raise ValueError(msg)
    try:
        if isinstance(text, (int, float)):
            q = ureg.Quantity(text, unit or "dimensionless")
        elif isinstance(text, str):
            cleaned = text.strip().rstrip(".").replace("^", "**").replace("·", "*")
            q = ureg.parse_expression(cleaned)
            if not isinstance(q, ureg.Quantity):
                q = ureg.Quantity(q, unit or "dimensionless")
            elif q.dimensionless and unit:
                q = ureg.Quantity(q.magnitude, unit)
        else:
            msg = f"expected a quantity, got {type(text).__name__}"
            raise ValueError(msg)
    except (
        pint.errors.PintError,
        SyntaxError,
        tokenize.TokenError,  # an unclosed bracket: "2.1 ("
        AssertionError,  # pint's parser asserts on some malformed input: "s2/{]m^"
        ArithmeticError,  # "1/0 J", "1*5^6e8"
        TypeError,
        AttributeError,
        KeyError,
    ) as e:
        msg = f"not a quantity: {e}"
        raise ValueError(msg) from e
    return q


class Units(Check):
    """``result`` is a physical quantity with the dimension of ``unit`` and, if ``equals`` (a
    quantity expression from the question, ``"0.5 * 2 kg * (3 m/s)**2"``, or a field) is
    given, the same magnitude within ``rtol``. A plain number in ``result`` is read in
    ``unit``.
    """

    kind = "units"

    def __init__(
        self, result: str, unit: str | None = None, equals: Any = None, rtol: float = 1e-3
    ) -> None:
        if unit is None and equals is None:
            msg = "units: give a unit to check the dimension against, or equals=, or both"
            raise RequestError(msg)
        self.result = normalise_pointer(result)
        self.unit = unit
        self.equals = Arg(equals, "reference") if equals is not None else None
        self.rtol = rtol
        self.name = f"units({self.result})"
        try:
            if unit is not None:
                registry().Unit(unit)
            if self.equals is not None and not self.equals.may_be_field:
                _quantity(equals, None)
        except Exception as e:  # pint raises many kinds on a bad unit
            msg = f"units: cannot read {unit!r} / {equals!r}: {e}"
            raise RequestError(msg) from e

    @property
    def reads(self) -> frozenset[str]:
        extra = None
        if self.equals is not None:
            extra = self.equals.pointer or normalise_pointer(self.equals.name or "")
        return frozenset({self.result, *([extra] if extra else [])})

    def _reference(self, value: Any) -> Any:
        if self.equals is None:
            return None
        raw, pointer = self.equals.raw(value)
        try:
            return _quantity(raw, None)
        except ValueError as e:
            raise Unreadable(pointer or "", f"cannot read the reference {raw!r}: {e}") from e

    def check(self, value: Any) -> CheckResult:
        v = as_value(value)
        try:
            ref = self._reference(v)
            raw = get_pointer(v, self.result)
        except Unreadable as u:
            return CheckResult((Failure(u.pointer, u.message, self.name, method=PINT),), PINT)
        except LookupError:
            missing = f"the result field {self.result!r} is missing"
            return CheckResult((Failure(self.result, missing, self.name, method=PINT),), PINT)
        message = self._judge(raw, ref)
        if message is None:
            return CheckResult((), PINT)
        expected = self._show(ref) if ref is not None else None
        return CheckResult((Failure(self.result, message, self.name, expected, PINT),), PINT)

    def _judge(self, raw: Any, ref: Any) -> str | None:
        ureg = registry()
        try:
            got = _quantity(raw, self.unit)
        except ValueError as e:
            return f"cannot read {raw!r}: {e}"
        want = ureg.Unit(self.unit) if self.unit is not None else ref.units
        if got.dimensionality != (1 * want).dimensionality:
            return f"{raw!r} has dimension {got.dimensionality}, not that of {want} "
        if ref is not None:
            if ref.dimensionality != got.dimensionality:
                return f"{raw!r} is not comparable with {self._show(ref)}"
            a, b = got.to(ref.units).magnitude, ref.magnitude
            if abs(a - b) > self.rtol * max(abs(b), 1e-12):
                return f"expected {self._show(ref)}, got {got.to(want):~P}"
        return None

    def _show(self, q: Any) -> str:
        if self.unit is not None:
            q = q.to(self.unit)
        return f"{q.magnitude:.6g} {q.units:~P}"

    def produce(self, value: Any, pointer: str) -> Any:
        if normalise_pointer(pointer) != self.result or self.equals is None:
            return None
        try:
            ref = self._reference(as_value(value))
        except Unreadable:
            return None
        return Quantity(ref.to(self.unit) if self.unit is not None else ref)

    def __repr__(self) -> str:
        return f"units(result={self.result!r}, unit={self.unit!r})"


class Quantity:
    """A produced quantity: a number field gets its magnitude, a text field ``"12 J"``."""

    def __init__(self, q: Any) -> None:
        self.q = q

    @property
    def magnitude(self) -> float:
        return float(self.q.magnitude)

    def __str__(self) -> str:
        return f"{self.q.magnitude:.6g} {self.q.units:~P}"


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_RELATION = re.compile(r"(==|!=|<=|>=|<|>)")
_FUNCTIONS = frozenset(
    {"sin", "cos", "tan", "exp", "log", "ln", "sqrt", "Abs", "abs", "pi", "E", "oo", "I"}
)


class Invariant(Check):
    """A declared invariant over fields: ``"total == a + b"``, ``"energy >= 0"`` (names are
    top-level fields, read as expressions), or a callable ``fn(value) -> bool``. ``blame`` is
    the field repaired when it fails (default: the first field named)."""

    kind = "invariant"

    def __init__(self, condition: str | Callable[[Any], bool], blame: str | None = None) -> None:
        self.condition = condition
        if callable(condition):
            if blame is None:
                msg = "invariant: a callable condition needs blame= (the field it judges)"
                raise RequestError(msg)
            self.sides: tuple[str, str, str] | None = None
            self.names: list[str] = []
        else:
            parts = _RELATION.split(condition)
            if len(parts) != 3:
                msg = f"invariant {condition!r}: expected 'A op B' with one of {list(_COMPARE)}"
                raise RequestError(msg)
            self.sides = (parts[0].strip(), parts[1], parts[2].strip())
            words = re.findall(r"[A-Za-z_]\w*", condition)
            self.names = [n for n in dict.fromkeys(words) if n not in _FUNCTIONS]
        target = blame or (self.names[0] if self.names else None)
        if target is None:
            msg = f"invariant {condition!r} names no field; give blame="
            raise RequestError(msg)
        self.blame = normalise_pointer(target)
        self.name = f"invariant({self.blame})"

    @property
    def reads(self) -> frozenset[str] | None:
        if self.sides is None:
            return None
        return frozenset({self.blame, *(normalise_pointer(n) for n in self.names)})

    def check(self, value: Any) -> CheckResult:
        if self.sides is None:
            assert callable(self.condition)
            ok = bool(self.condition(value))
            failures = (
                () if ok else (Failure(self.blame, "the invariant does not hold", self.name),)
            )
            return CheckResult(failures, "callable")
        v = as_value(value)
        left, op, right = self.sides
        try:
            a, b = self._side(left, v), self._side(right, v)
        except Unreadable as u:
            return CheckResult((Failure(u.pointer, u.message, self.name, method=EXACT),), EXACT)
        if op in ("==", "!="):
            equal, method = same(a, b)
            ok = equal if op == "==" else not equal
        else:
            method = EXACT
            try:
                ok = bool(_COMPARE[op](a, b))
            except TypeError as e:
                msg = f"cannot compare {show(a)} {op} {show(b)}: {e}"
                return CheckResult((Failure(self.blame, msg, self.name, method=EXACT),), EXACT)
        if ok:
            return CheckResult((), method)
        msg = f"{left} {op} {right} fails: {show(a)} vs {show(b)}"
        return CheckResult((Failure(self.blame, msg, self.name, method=method),), method)

    def _side(self, text: str, value: dict[str, Any]) -> Any:
        import sympy

        expr = read_expr(text)
        subs = {}
        for sym in expr.free_symbols:
            if isinstance(value, dict) and str(sym) in value:
                subs[sym] = Arg(str(sym), "operand").expr(value)
        return expr.xreplace(subs) if subs else sympy.sympify(expr)

    def __repr__(self) -> str:
        return f"invariant({self.condition!r}, blame={self.blame!r})"

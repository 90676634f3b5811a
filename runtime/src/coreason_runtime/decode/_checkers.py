"""Verifiers for quantities with units (pint) and for JSON against a schema (jsonschema)."""

from __future__ import annotations

import json
import re
from typing import Any

from coreason_runtime.decode._verify import StepFailure, Verdict, _lines, _strip_span

__all__ = ["SchemaVerifier", "UnitsVerifier"]


# --- units ------------------------------------------------------------------------------------

_QTY_SIDE = re.compile(r"[^=]+")


class UnitsVerifier:
    """Checks that every side of ``a = b = c`` lines carrying units agrees (pint).

    Sides that are not quantities (a symbol such as ``F`` or ``m a``) are skipped; among the
    rest, each must have the first one's dimensionality and magnitude (relative ``rtol``).
    """

    name = "units"

    def __init__(self, rtol: float = 1e-3) -> None:
        import pint

        self.ureg: Any = pint.UnitRegistry()
        self.rtol = rtol

    def _quantity(self, text: str) -> Any:
        import pint

        t = text.strip().rstrip(".,;")
        if not t or not re.search(r"\d", t) or not re.search(r"[A-Za-zΩµ°]", t):
            return None
        try:
            q = self.ureg.parse_expression(t.replace("^", "**").replace("·", "*").replace("×", "*"))
        except (
            pint.errors.PintError,
            SyntaxError,
            TypeError,
            ValueError,
            AttributeError,
            KeyError,
            ZeroDivisionError,
        ):
            return None
        return q if isinstance(q, self.ureg.Quantity) and not q.dimensionless else None

    def check(self, text: str) -> Verdict:
        verdict = Verdict()
        for idx, pos, line in _lines(text):
            if "=" not in line:
                continue
            sides = [
                (m.start(), m.end(), self._quantity(m.group())) for m in _QTY_SIDE.finditer(line)
            ]
            sides = [s for s in sides if s[2] is not None]
            if len(sides) < 2:
                continue
            verdict.checked += 1
            ref = sides[0][2]
            for s, e, q in sides[1:]:
                if q.dimensionality != ref.dimensionality:
                    msg = (
                        f"{q.units} ({q.dimensionality}) does not match "
                        f"{ref.units} ({ref.dimensionality})"
                    )
                elif abs(q.to(ref.units).magnitude - ref.magnitude) > self.rtol * max(
                    abs(ref.magnitude), 1e-12
                ):
                    msg = f"{q} is {q.to(ref.units):~P}, not {ref:~P}"
                else:
                    continue
                a, b = _strip_span(line, s, e)
                verdict.failures.append(
                    StepFailure(
                        idx,
                        pos + a,
                        pos + b,
                        pos,
                        pos + len(line),
                        "units",
                        line[a:b],
                        msg,
                        f"{ref:~P}",
                    )
                )
                break
        return verdict


# --- JSON schema ------------------------------------------------------------------------------


class SchemaVerifier:
    """Validates the JSON object in the text against a JSON schema (jsonschema).

    Each error is located at the offending value in the text (or at the parse error).
    """

    name = "schema"

    def __init__(self, schema: dict[str, Any]) -> None:
        import jsonschema

        self.schema = schema
        self.validator = jsonschema.Draft202012Validator(schema)

    def check(self, text: str) -> Verdict:
        verdict = Verdict()
        start = text.find("{")
        if start < 0:
            return verdict
        try:
            obj, end = json.JSONDecoder().raw_decode(text, start)
        except json.JSONDecodeError as e:
            ls, le = _line_bounds(text, e.pos)
            verdict.failures.append(
                StepFailure(
                    _line_index(text, e.pos),
                    ls,
                    le,
                    ls,
                    le,
                    "json",
                    text[ls:le],
                    f"invalid JSON: {e.msg}",
                )
            )
            verdict.checked = 1
            return verdict
        verdict.checked = 1
        for err in sorted(self.validator.iter_errors(obj), key=lambda er: list(map(str, er.path))):
            c0, c1 = _locate(text, start, end, list(err.path))
            ls, le = _line_bounds(text, c0)
            verdict.failures.append(
                StepFailure(
                    _line_index(text, c0), c0, c1, ls, le, "schema", text[c0:c1], err.message
                )
            )
        return verdict


def _line_bounds(text: str, pos: int) -> tuple[int, int]:
    ls = text.rfind("\n", 0, pos) + 1
    le = text.find("\n", pos)
    return ls, len(text) if le < 0 else le


def _line_index(text: str, pos: int) -> int:
    return sum(1 for _, p, _ in _lines(text) if p <= pos) - 1


def _locate(text: str, start: int, end: int, path: list[Any]) -> tuple[int, int]:
    """Character span of the value at ``path`` inside the JSON text ``text[start:end]``."""
    lo, hi = start, end
    for key in path:
        if isinstance(key, int):
            return lo, hi
        m = re.compile(r'"' + re.escape(str(key)) + r'"\s*:\s*').search(text, lo, hi)
        if not m:
            return lo, hi
        try:
            _, vend = json.JSONDecoder().raw_decode(text, m.end())
        except json.JSONDecodeError:
            return m.start(), hi
        lo, hi = m.end(), vend
    return lo, hi

"""Verifiers that find the wrong step (SymPy, units, JSON schema) and map it to a token span."""

from __future__ import annotations

import re
import tokenize
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from coreason_runtime._events import EventType
from coreason_runtime._exceptions import VerifierError

if TYPE_CHECKING:
    from coreason_runtime.decode._session import DecodeSession

__all__ = [
    "StepFailure",
    "SympyVerifier",
    "Verdict",
    "Verifier",
    "locate_failures",
]

THUNK_RE = re.compile(r"⟦\s*([A-Za-z_][\w.]*)\s*(?:\((.*?)\))?\s*⟧")


@dataclass(frozen=True)
class StepFailure:
    """A step a verifier rejects. Character offsets are into the text that was checked.

    ``start``/``end`` cover the wrong claim (e.g. the right-hand side of a derivative);
    ``token_start``/``token_end`` are filled in by :func:`locate_failures`.
    """

    step: int
    start: int
    end: int
    line_start: int
    line_end: int
    kind: str
    claim: str
    message: str
    expected: str | None = None
    token_start: int | None = None
    token_end: int | None = None


@dataclass
class Verdict:
    """What a verifier found: failures, how many steps it could check, thunks it needs."""

    failures: list[StepFailure] = field(default_factory=list)
    checked: int = 0
    needs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


@runtime_checkable
class Verifier(Protocol):
    """Checks a reasoning text step by step."""

    name: str

    def check(self, text: str) -> Verdict: ...


def _lines(text: str) -> Iterator[tuple[int, int, str]]:
    """(index, start offset, line) for every non-blank line."""
    pos = 0
    idx = 0
    for line in text.splitlines(keepends=True):
        if line.strip():
            yield idx, pos, line.rstrip("\n")
            idx += 1
        pos += len(line)


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Shrink ``[start, end)`` past surrounding blanks and trailing punctuation."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] in ".,;:"):
        end -= 1
    return start, end


# --- SymPy ------------------------------------------------------------------------------------

_FUNCS = (
    "sin",
    "cos",
    "tan",
    "sec",
    "csc",
    "cot",
    "exp",
    "log",
    "ln",
    "sqrt",
    "sinh",
    "cosh",
    "tanh",
    "asin",
    "acos",
    "atan",
    "arcsin",
    "arccos",
    "arctan",
    "pi",
    "E",
)
_SAFE_RE = re.compile(r"^[0-9A-Za-z+\-*/^().,\s]*$")
_IDENT_RE = re.compile(r"[A-Za-z]+")
_UNICODE = {"−": "-", "·": "*", "×": "*", "²": "^2", "³": "^3", "⁴": "^4", "π": "pi", "√": "sqrt"}
_PREFIX = r"^\s*(?:(?:step\s*)?\d+[.):]\s*|[-*•]\s*|so,?\s*|then,?\s*|thus,?\s*|therefore,?\s*)?"
_DERIV = re.compile(
    _PREFIX + r"(?:d/d([a-z])\s*(?:of\s*)?|the derivative of\s*)(.+?)\s*(?:=|is)\s*(.+)$", re.I
)
_PRIME = re.compile(_PREFIX + r"([a-zA-Z])'\(([a-z])\)\s*=\s*(.+)$")
_DEF = re.compile(_PREFIX + r"([a-zA-Z])\(([a-z])\)\s*=\s*(.+)$")
_INTEG = re.compile(_PREFIX + r"(?:∫|int\b|integral of)\s*(.+?)\s*d([a-z])\s*=\s*(.+)$", re.I)
_SIMP = re.compile(_PREFIX + r"(?:simplify|expand|factor)\s*:?\s*(.+?)\s*=\s*(.+)$", re.I)
_SOLVE = re.compile(
    _PREFIX + r"solve\s*:?\s*(.+?=.+?)\s*(?:for\s*[a-z]\s*)?(?::|=>|⇒|→|gives)\s*(.+)$", re.I
)
_EQ = re.compile(_PREFIX + r"(.+?)\s*=\s*(.+)$")


def _parse(text: str) -> Any:
    """A SymPy expression from calculus-text notation (``3x^2``, ``sin x``, ``e^x``)."""
    import sympy
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    for k, v in _UNICODE.items():
        text = text.replace(k, v)
    text = text.strip().rstrip(".,;")
    if not text or not _SAFE_RE.match(text) or len(text) > 200:
        msg = f"not a plain expression: {text!r}"
        raise ValueError(msg)
    for ident in _IDENT_RE.findall(text):
        if ident not in _FUNCS and len(ident) > 1 and not all(c in "xyztabcnkC" for c in ident):
            msg = f"unknown name {ident!r} in {text!r}"
            raise ValueError(msg)
    local = {
        "e": sympy.E,
        "ln": sympy.log,
        "arcsin": sympy.asin,
        "arccos": sympy.acos,
        "arctan": sympy.atan,
        "C": sympy.Symbol("C"),
        "E": sympy.E,
    }
    tr = (*standard_transformations, implicit_multiplication_application, convert_xor)
    return parse_expr(text, local_dict=local, transformations=tr, evaluate=True)


def _caret(expr: Any) -> str:
    return str(expr).replace("**", "^")


def _same(a: Any, b: Any) -> bool:
    import sympy

    diff = sympy.simplify(sympy.expand(a - b))
    return bool(diff == 0)


class SympyVerifier:
    """Checks derivatives, integrals, simplifications and equation solving with SymPy.

    Recognised steps (one per line): ``d/dx EXPR = RESULT``, ``f'(x) = RESULT`` after
    ``f(x) = EXPR``, ``∫ EXPR dx = RESULT`` (checked by differentiating the result),
    ``simplify EXPR = RESULT``, ``solve EQ: x = a, x = b``, and plain ``A = B`` identities.
    Lines it cannot read are skipped (with ``strict``, a ``d/dx`` step whose result cannot be
    read is a failure); a line holding a thunk ``⟦name(...)⟧`` is reported in
    ``needs`` because it cannot be checked until the thunk is forced.
    """

    name = "sympy"

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict

    def check(self, text: str) -> Verdict:
        verdict = Verdict()
        defs: dict[str, Any] = {}
        for idx, pos, line in _lines(text):
            thunks = THUNK_RE.findall(line)
            if thunks:  # needed only if the line is a step this verifier would check
                probe = THUNK_RE.sub("T", line)
                if self._check_line(idx, pos, probe, dict(defs)) is not None:
                    verdict.needs.extend(name for name, _ in thunks)
                continue
            failure = self._check_line(idx, pos, line, defs)
            if failure is None:
                continue
            if isinstance(failure, StepFailure):
                verdict.failures.append(failure)
            verdict.checked += 1
        return verdict

    def _fail(
        self,
        idx: int,
        pos: int,
        line: str,
        m: re.Match[str],
        group: int,
        kind: str,
        expected: Any,
        message: str,
    ) -> StepFailure:
        s, e = _strip_span(line, m.start(group), m.end(group))
        return StepFailure(
            idx,
            pos + s,
            pos + e,
            pos,
            pos + len(line),
            kind,
            line[s:e],
            message,
            None if expected is None else _caret(expected),
        )

    def _check_line(
        self, idx: int, pos: int, line: str, defs: dict[str, Any]
    ) -> StepFailure | bool | None:
        """A failure, True (checked and right) or None (not a step this verifier reads).

        The first pattern that matches the line decides; ``defs`` collects ``f(x) = ...``.
        """
        for pattern, kind, read in _STEPS:
            m = pattern.match(line)
            if not m:
                continue
            try:
                outcome = read(m, defs, self.strict)
            except _unreadable():
                return None
            if isinstance(outcome, _Claim):
                if _same(outcome.got, outcome.expected):
                    return True
                got = _caret(outcome.got)
                message = f"expected {_caret(outcome.expected)}, got {got}"
                outcome = _Wrong(outcome.group, outcome.expected, message)
            if isinstance(outcome, _Wrong):
                return self._fail(
                    idx, pos, line, m, outcome.group, kind, outcome.expected, outcome.message
                )
            return outcome
        return None


# --- one reader per kind of step --------------------------------------------------------------


@dataclass(frozen=True)
class _Claim:
    """A step read: it claims ``got`` where ``expected`` is right (in match group ``group``)."""

    expected: Any
    got: Any
    group: int


@dataclass(frozen=True)
class _Wrong:
    """A step already found wrong; ``group`` holds the wrong claim."""

    group: int
    expected: Any
    message: str


# None: not a step this verifier reads; True: checked and right
_Outcome = _Claim | _Wrong | bool | None


def _parse_errors() -> tuple[type[Exception], ...]:
    """What :func:`_parse` raises on text it cannot read."""
    import sympy

    return (ValueError, TypeError, SyntaxError, sympy.SympifyError, tokenize.TokenError)


def _unreadable() -> tuple[type[Exception], ...]:
    """What reading a step raises when the step is not one SymPy can check."""
    return (*_parse_errors(), AttributeError, NotImplementedError, IndexError)


def _derivative(m: re.Match[str], defs: dict[str, Any], strict: bool) -> _Outcome:
    """``d/dx EXPR = RESULT``; with ``strict`` an unreadable result is a failure."""
    import sympy

    var = sympy.Symbol(m.group(1) or "x")
    expected = sympy.diff(_parse(m.group(2)), var)
    try:
        got = _parse(m.group(3))
    except _parse_errors() as e:
        if not strict:
            raise
        return _Wrong(3, expected, f"cannot read the result: {e}")
    return _Claim(expected, got, 3)


def _prime(m: re.Match[str], defs: dict[str, Any], strict: bool) -> _Outcome:
    """``f'(x) = RESULT`` after a definition of ``f``."""
    import sympy

    fname, var = m.group(1), sympy.Symbol(m.group(2))
    if fname not in defs:
        return None
    return _Claim(sympy.diff(defs[fname], var), _parse(m.group(3)), 3)


def _integral(m: re.Match[str], defs: dict[str, Any], strict: bool) -> _Outcome:
    """``∫ EXPR dx = RESULT``, checked by differentiating the result."""
    import sympy

    var = sympy.Symbol(m.group(2))
    integrand, got = _parse(m.group(1)), _parse(m.group(3))
    if _same(sympy.diff(got, var), integrand):
        return True
    expected = sympy.integrate(integrand, var)
    return _Wrong(3, expected, f"d/d{var} of the result is not the integrand")


def _solve(m: re.Match[str], defs: dict[str, Any], strict: bool) -> _Outcome:
    """``solve EQ: x = a, x = b``: the stated solutions are exactly SymPy's."""
    import sympy

    lhs, rhs = m.group(1).split("=", 1)
    eq = _parse(lhs) - _parse(rhs)
    var = sorted(eq.free_symbols, key=str)[0]
    want = set(sympy.solve(eq, var))
    vals = re.findall(r"=\s*([^,;]+?)(?=\s*(?:,|;|\bor\b|\band\b|$))", m.group(2))
    got_set = {_parse(v) for v in vals}
    if got_set and {sympy.nsimplify(g) for g in got_set} == want:
        return True
    solutions = sorted(want, key=str)
    return _Wrong(2, solutions, f"the solutions are {solutions}")


def _simplify(m: re.Match[str], defs: dict[str, Any], strict: bool) -> _Outcome:
    """``simplify EXPR = RESULT`` (also expand, factor)."""
    return _Claim(_parse(m.group(1)), _parse(m.group(2)), 2)


def _definition(m: re.Match[str], defs: dict[str, Any], strict: bool) -> _Outcome:
    """``f(x) = EXPR``: remembered for later ``f'(x)`` steps, not itself checked."""
    defs[m.group(1)] = _parse(m.group(3))
    return None


def _identity(m: re.Match[str], defs: dict[str, Any], strict: bool) -> _Outcome:
    """A plain ``A = B``, only when the left side is more than a name."""
    left = m.group(1).strip()
    if re.fullmatch(r"[A-Za-z]\w*", left) or "=" in m.group(2):
        return None
    return _Claim(_parse(left), _parse(m.group(2)), 2)


_Reader = Callable[[re.Match[str], dict[str, Any], bool], _Outcome]

# in order: the first pattern that matches a line decides how it is read
_STEPS: tuple[tuple[re.Pattern[str], str, _Reader], ...] = (
    (_DERIV, "derivative", _derivative),
    (_PRIME, "derivative", _prime),
    (_INTEG, "integral", _integral),
    (_SOLVE, "solve", _solve),
    (_SIMP, "simplify", _simplify),
    (_DEF, "definition", _definition),
    (_EQ, "identity", _identity),
)


# --- mapping to the session -------------------------------------------------------------------


def locate_failures(
    session: DecodeSession, verifier: Verifier
) -> tuple[Verdict, list[StepFailure]]:
    """Run ``verifier`` on the session's output and map each failure to a token span.

    Publishes VERIFIER_FAILED per failure (with token offsets). A verifier that raises is
    wrapped in :class:`VerifierError`; the session is never touched.
    """
    text = session.output_text
    try:
        verdict = verifier.check(text)
    except Exception as e:
        msg = f"verifier {getattr(verifier, 'name', verifier)!r} raised {type(e).__name__}: {e}"
        raise VerifierError(msg) from e
    located = []
    for f in verdict.failures:
        t0, t1 = session.char_span_to_tokens(f.start, f.end)
        f = replace(f, token_start=t0, token_end=t1)
        located.append(f)
        session.emit(
            EventType.VERIFIER_FAILED,
            verifier=verifier.name,
            step=f.step,
            kind=f.kind,
            claim=f.claim,
            expected=f.expected,
            message=f.message,
            start=t0,
            end=t1,
        )
    verdict.failures = located
    return verdict, located

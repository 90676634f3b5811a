"""Short, typed errors in cells: a CoreasonError shows what happened, its numbers and a next step.

IPython's ``set_custom_exc`` routes every :class:`~coreason_runtime.CoreasonError` that reaches
the top of a cell (raised by a magic or by plain code such as ``rt.router.generate``) to
:func:`render`: a few lines, like IPython's own ``UsageError``, instead of two pages through
``concurrent.futures`` and the ledger backend. The full traceback is one ``%tb`` (or
``%coreason debug``) away, because the handler records the error as the last one
(``sys.last_value``). A ``KeyboardInterrupt`` that stopped the runtime's work in this cell ends
as one line saying what ran and what it cost (the runtime's note on it); any other
interrupt, and every other exception, shows IPython's usual traceback.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coreason_runtime import (
    AuthenticationError,
    BudgetExceededError,
    CoreasonError,
    EpistemicYieldError,
    MissingExtraError,
    RateLimitError,
    RequestError,
    SchemaError,
    TierTimeoutError,
    TierUnavailableError,
    UnknownWorkflowError,
    ValidationFailure,
    WorkflowAbortedError,
)
from coreason_runtime.tensor import interrupt_summary

__all__ = [
    "ErrorSummary",
    "ShortErrors",
    "ledger_line",
    "render",
    "summarize",
    "user_traceback",
]

_RED, _CYAN, _DIM, _RESET = "\x1b[31m", "\x1b[36m", "\x1b[2m", "\x1b[0m"
_MAX_HEADLINE = 240
_TB_HINT = "full traceback: %tb (or %coreason debug)"


@dataclass
class ErrorSummary:
    """What a cell shows for an error: a headline, labelled facts and what to do next."""

    name: str
    headline: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    next: list[str] = field(default_factory=list)

    def lines(self, *, color: bool = False) -> list[str]:
        red, cyan, dim, reset = (_RED, _CYAN, _DIM, _RESET) if color else ("", "", "", "")
        out = [f"{red}{self.name}{reset}: {self.headline}"]
        width = max((len(k) for k, _ in self.facts), default=0)
        out += [f"  {cyan}{k:<{width}}{reset}  {v}" for k, v in self.facts]
        out += [f"  {dim}→{reset} {step}" for step in self.next]
        return out


def _headline(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else type(error).__name__
    return first if len(first) <= _MAX_HEADLINE else first[: _MAX_HEADLINE - 1] + "…"


def _num(value: float | None) -> str:
    return "∞" if value is None else f"{value:g}"


def ledger_line(ledger: Any) -> str:
    """``"tiny: Ω 40 · C 0 spent · 0 reserved · 40 left"`` for a Ledger."""
    left = "∞" if ledger.ceiling is None else f"{max(ledger.remaining, 0):g}"
    return (
        f"{ledger.workflow_id}: Ω {_num(ledger.ceiling)} · C {ledger.spent:g} spent · "
        f"{ledger.reserved:g} reserved · {left} left"
    )


def _attempts_line(error: CoreasonError) -> str | None:
    tried = [a for a in error.attempts if not a.skipped]
    if not tried:
        return None
    shown = ", ".join(
        f"{a.tier}#{a.index} {'ok' if a.ok else a.error_type or 'failed'} (C {a.cost:g})"
        for a in tried[:4]
    )
    more = f", … {len(tried) - 4} more" if len(tried) > 4 else ""
    total = sum(a.cost for a in error.attempts)
    return f"{shown}{more} · C {total:g} charged in all"


def _failing_field(error: BaseException) -> str | None:
    """The first failing field of a pydantic validation error behind ``error``, if any."""
    from pydantic import ValidationError

    cause = error.__cause__
    if isinstance(cause, ValidationError) and cause.errors():
        first = cause.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "<root>"
        return f"{where}: {first.get('msg', '')}"
    return None


# --- what to do next, per error type (the most specific class wins) ----------------------------


def _next_budget(e: CoreasonError) -> list[str]:
    wf = e.workflow_id or "WORKFLOW"
    assert isinstance(e, BudgetExceededError)
    need = e.requested if e.requested is not None else 0.0
    spent = e.spent if e.spent is not None else 0.0
    suggestion = max(int(2 * (need + spent)), 1000)
    return [
        f"raise the ceiling: %coreason budget {wf} {suggestion}",
        "or ask for fewer output tokens (-n) or a shorter prompt",
    ]


def _next_unknown(e: CoreasonError) -> list[str]:
    return [f"create the ledger first: %coreason budget {e.workflow_id or 'WORKFLOW'} 20000"]


def _next_aborted(e: CoreasonError) -> list[str]:
    return ["the workflow stays usable: run the cell again when you want the answer"]


def _next_yield(e: CoreasonError) -> list[str]:
    return [
        "every tier failed; answer it by hand: "
        "%config CoreasonMagics.oracle_circuit = True opens a form"
    ]


def _next_validation(e: CoreasonError) -> list[str]:
    return ["loosen the schema, give more output tokens (-n), or let it escalate (-t local,oracle)"]


def _next_unavailable(e: CoreasonError) -> list[str]:
    return [
        "configure the oracle (COREASON_ORACLE_BASE_URL, _MODEL, _API_KEY) "
        "or keep to the local tier: -t local"
    ]


def _next_auth(e: CoreasonError) -> list[str]:
    return ["check COREASON_ORACLE_API_KEY (it is never printed)"]


def _next_rate(e: CoreasonError) -> list[str]:
    wait = getattr(e, "retry_after", None)
    return [f"wait {wait:g} s and run the cell again" if wait else "wait, then run it again"]


def _next_timeout(e: CoreasonError) -> list[str]:
    return ["ask for fewer output tokens (-n), or raise the tier's timeout in RuntimeConfig"]


def _next_schema(e: CoreasonError) -> list[str]:
    return ["check the schema: a pydantic model or a JSON schema dict with a 'type'"]


def _next_request(e: CoreasonError) -> list[str]:
    return ["check the request's arguments (%coreason help ask lists the options)"]


def _next_extra(e: CoreasonError) -> list[str]:
    assert isinstance(e, MissingExtraError)
    return [f"pip install 'coreason-runtime[{e.extra}]'"]


NEXT_STEPS: dict[type[CoreasonError], Callable[[CoreasonError], list[str]]] = {
    BudgetExceededError: _next_budget,
    UnknownWorkflowError: _next_unknown,
    WorkflowAbortedError: _next_aborted,
    EpistemicYieldError: _next_yield,
    ValidationFailure: _next_validation,
    AuthenticationError: _next_auth,
    RateLimitError: _next_rate,
    TierUnavailableError: _next_unavailable,
    TierTimeoutError: _next_timeout,
    SchemaError: _next_schema,
    RequestError: _next_request,
    MissingExtraError: _next_extra,
}


def _next_steps(error: CoreasonError) -> list[str]:
    for cls in type(error).__mro__:
        step = NEXT_STEPS.get(cls)
        if step is not None:
            return step(error)
    return []


def summarize(error: CoreasonError) -> ErrorSummary:
    """The compact form of ``error``: headline, ledger, tier, attempts, failing field, next."""
    summary = ErrorSummary(type(error).__name__, _headline(error))
    if error.ledger is not None and hasattr(error.ledger, "spent"):
        summary.facts.append(("ledger", ledger_line(error.ledger)))
    elif isinstance(error, BudgetExceededError) and error.ceiling is not None:
        summary.facts.append(("ledger", f"Ω {_num(error.ceiling)} · C {_num(error.spent)} spent"))
    if isinstance(error, BudgetExceededError) and error.requested is not None:
        summary.facts.append(("needed", f"C {error.requested:g} for this attempt"))
    if error.tier:
        summary.facts.append(("tier", error.tier))
    attempts = _attempts_line(error)
    if attempts:
        summary.facts.append(("attempts", attempts))
    failing = _failing_field(error)
    if failing:
        summary.facts.append(("field", failing))
    for detail in getattr(error, "results", None) or ():
        if getattr(detail, "ok", None) is False:
            summary.facts.append(("violated", f"{detail.name}: {detail.detail}"))
    summary.next = [*_next_steps(error), _TB_HINT]
    return summary


def render(error: CoreasonError, *, color: bool = True) -> list[str]:
    """A structured traceback (IPython's list of lines) holding :func:`summarize`'s lines."""
    return ["\n".join(summarize(error).lines(color=color))]


# --- frames: ours are hidden from a user's own error ------------------------------------------

_OUR_PARTS = (
    "/coreason_lab/",
    "/coreason_runtime/",
    "/concurrent/futures/",
    "/asyncio/",
    "/threading.py",
    "/tenacity/",
)


def _ours(frame: types.FrameType) -> bool:
    name = frame.f_code.co_filename.replace("\\", "/")
    return any(part in name for part in _OUR_PARTS)


def user_traceback(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` without the frames of coreason, futures, asyncio, threading and tenacity.

    A step's own error (a ``ZeroDivisionError`` in a thunk's body) then shows the user's lines
    only; if every frame is ours the traceback is kept whole.
    """
    frames: list[types.TracebackType] = []
    whole = tb
    while tb is not None:
        if not _ours(tb.tb_frame):
            frames.append(tb)
        tb = tb.tb_next
    if not frames:
        return whole
    out: types.TracebackType | None = None
    for t in reversed(frames):
        out = types.TracebackType(out, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return out


# --- the shell's handler ------------------------------------------------------------------------


class ShortErrors:
    """Installs the compact rendering on a shell (and takes it away again).

    Parameters
    ----------
    enabled:
        Called per error; False shows IPython's full traceback (``short_errors`` setting).
        A ``KeyboardInterrupt`` is shortened only when it stopped runtime work (it carries
        the runtime's one-line account); any other shows IPython's usual traceback.
    """

    def __init__(self, enabled: Callable[[], bool]) -> None:
        self._enabled = enabled
        self._shell: Any = None
        self._previous: tuple[tuple[type[BaseException], ...], Any] = ((), None)

    def install(self, shell: Any) -> None:
        if shell is None or self._shell is not None:
            return
        self._shell = shell
        self._previous = (tuple(shell.custom_exceptions), shell.CustomTB)
        ours: tuple[type[BaseException], ...] = (CoreasonError, KeyboardInterrupt)
        shell.set_custom_exc((*ours, *self._previous[0]), self._handle)

    def uninstall(self) -> None:
        shell, self._shell = self._shell, None
        if shell is None:
            return
        exc, handler = self._previous
        if exc:  # an earlier extension's handler, bound to the shell already
            shell.custom_exceptions, shell.CustomTB = exc, handler
        else:
            shell.set_custom_exc((), None)

    def _handle(
        self,
        shell: Any,
        etype: type[BaseException],
        value: BaseException,
        tb: types.TracebackType | None,
        tb_offset: int | None = None,
    ) -> list[str] | None:
        # %tb and %coreason debug read the last error from here, as after any traceback
        sys.last_type, sys.last_value, sys.last_traceback = etype, value, tb
        stb = self._short(value) if self._enabled() else None
        if stb is None:
            previous_exc, previous_handler = self._previous
            if previous_exc and isinstance(value, previous_exc) and not _is_ours(value):
                return previous_handler(etype, value, tb, tb_offset)  # type: ignore[no-any-return]
            shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
            return None
        # IPython's documented override point for showing a structured traceback: in a
        # kernel it sends the error to the frontend (ename, evalue, these lines).
        shell._showtraceback(etype, value, stb)
        return None

    def _short(self, value: BaseException) -> list[str] | None:
        if isinstance(value, CoreasonError):
            return render(value)
        if isinstance(value, KeyboardInterrupt):
            text = interrupt_summary(value)
            return None if text is None else [f"{_RED}KeyboardInterrupt{_RESET}: {text}"]
        return None


def _is_ours(value: BaseException) -> bool:
    return isinstance(value, (CoreasonError, KeyboardInterrupt))

"""Typed parsing of a magic's first line: one argparse parser per verb, errors as UsageError."""

from __future__ import annotations

import argparse
import difflib
import math
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from IPython.core.error import UsageError

__all__ = [
    "VERBS",
    "AskArgs",
    "BudgetArgs",
    "CheckArgs",
    "ControlArgs",
    "DashboardArgs",
    "DebugArgs",
    "HelpArgs",
    "InvariantArgs",
    "ReplayArgs",
    "ResetArgs",
    "RunArgs",
    "StatusArgs",
    "ThunkArgs",
    "VersionArgs",
    "parse_line",
    "suggest",
]

A = TypeVar("A")


def suggest(word: str, choices: Sequence[str]) -> str:
    """``" Did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    quoted = " or ".join(repr(c) for c in close)
    return f" Did you mean {quoted}?"


def _ceiling(text: str) -> float:
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        msg = f"a ceiling must be a positive number of cost units, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not math.isfinite(value) or value <= 0:
        msg = f"a ceiling must be a positive finite number, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        msg = f"expected a positive whole number, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 1:
        msg = f"expected a positive whole number, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not n.isidentifier() and not n.replace("-", "_").isidentifier()]
    if bad:
        msg = f"not a name: {', '.join(map(repr, bad))} (separate names with commas)"
        raise argparse.ArgumentTypeError(msg)
    return names


def _identifier(text: str) -> str:
    if not text.isidentifier():
        msg = f"{text!r} is not a valid Python variable name"
        raise argparse.ArgumentTypeError(msg)
    return text


@dataclass
class BudgetArgs:
    """``budget [WORKFLOW] [CEILING]``: show all ledgers, show one, or set its ceiling Ω."""

    workflow: str | None = None
    ceiling: float | None = None


@dataclass
class AskArgs:
    """``ask [SCHEMA] [-w W] [-t a,b] [-n MAX_TOKENS] [-o VAR] [--verify V] [--background]``."""

    schema: str | None = None
    workflow: str | None = None
    tiers: list[str] | None = None
    max_tokens: int | None = None
    into: str | None = None
    background: bool = False
    dashboard: bool | None = None
    verify: str | None = None
    dry_run: bool = False
    stream: bool | None = None


@dataclass
class ThunkArgs:
    """``thunk NAME [--after a,b] [--workflow W]``: the body is the lazy step's code."""

    name: str = ""
    after: list[str] = field(default_factory=list)
    workflow: str | None = None


@dataclass
class InvariantArgs:
    """``invariant NAME [--unit U] [--of EXPR]``: the body (or the unit) is the constraint."""

    name: str = ""
    unit: str | None = None
    of: str | None = None


@dataclass
class RunArgs:
    """``run [TARGET ...] [--workflow W] [--no-check]``: force declared thunks in DAG order."""

    targets: list[str] = field(default_factory=list)
    workflow: str | None = None
    check: bool = True


@dataclass
class CheckArgs:
    """``check [NAME ...]``: evaluate declared invariants now."""

    names: list[str] = field(default_factory=list)


@dataclass
class StatusArgs:
    """``status``: ledgers, handles, thunks, invariants."""


@dataclass
class DashboardArgs:
    """``dashboard [--workflow W] [--views budget,dag,cache,decode]``."""

    workflow: str | None = None
    views: list[str] | None = None


@dataclass
class ControlArgs:
    """``pause|resume|abort|preempt [WORKFLOW]``: an intent for a running workflow."""

    workflow: str | None = None


@dataclass
class ResetArgs:
    """``reset [WORKFLOW] [--steps]``: zero a ledger (ceiling kept) or forget declared steps."""

    workflow: str | None = None
    steps: bool = False


@dataclass
class HelpArgs:
    """``help [VERB]``."""

    verb: str | None = None


@dataclass
class VersionArgs:
    """``version``."""


@dataclass
class ReplayArgs:
    """``replay [on|off|clear]``: this notebook's exact replay record (no word: its state)."""

    action: str = "status"


@dataclass
class DebugArgs:
    """``debug``: the full traceback of the last error."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (with a suggestion) instead of printing and exiting."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        hint = ""
        if message.startswith("unrecognized arguments:"):
            unknown = message.split(":", 1)[1].split()
            options = [o for a in self._actions for o in a.option_strings]
            hint = "".join(suggest(u.split("=", 1)[0], options) for u in unknown if u[:1] == "-")
        msg = f"%coreason {self.prog.split()[-1]}: {message}.{hint}\n{self.format_usage()}"
        raise UsageError(msg.strip())

    def exit(self, status: int = 0, message: str | None = None) -> Any:  # type: ignore[override]
        raise UsageError(message or self.format_help())


def _budget(p: _Parser) -> None:
    p.add_argument("workflow", nargs="?", help="workflow id (default: all ledgers)")
    p.add_argument("ceiling", nargs="?", type=_ceiling, help="set the ceiling Ω to this cost")


def _ask(p: _Parser) -> None:
    p.add_argument(
        "schema",
        nargs="?",
        help="a pydantic model in the namespace; omit to define one in the cell above a line '---'",
    )
    p.add_argument("-w", "--workflow")
    p.add_argument("-t", "--tiers", type=_names, help="e.g. local,oracle")
    p.add_argument("-n", "--max-tokens", type=_positive_int, dest="max_tokens")
    p.add_argument("-o", "--into", type=_identifier, help="variable for the value")
    p.add_argument(
        "-b",
        "--background",
        action="store_true",
        help="return a handle at once; the request runs on the runtime thread",
    )
    p.add_argument("--dashboard", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--verify",
        help="verifiers, e.g. 'derivative(of=x**3, result=derivative)', or a callable's name",
    )
    p.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="show the tier plan, the reserved worst case and what is left of Ω; run nothing",
    )
    p.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show the answer growing as tokens arrive (default: the stream setting)",
    )


def _thunk(p: _Parser) -> None:
    p.add_argument("name", type=_identifier)
    p.add_argument("-a", "--after", type=_names, default=[], help="steps this one depends on")
    p.add_argument("-w", "--workflow")


def _invariant(p: _Parser) -> None:
    p.add_argument("name", type=_identifier)
    p.add_argument("-u", "--unit", help="a pint unit the value must be compatible with")
    p.add_argument("--of", help="expression whose unit is checked (default: NAME)")


def _run(p: _Parser) -> None:
    p.add_argument("targets", nargs="*", help="steps to force (default: every declared step)")
    p.add_argument("-w", "--workflow")
    p.add_argument(
        "--no-check", dest="check", action="store_false", help="skip invariants after the run"
    )


def _check(p: _Parser) -> None:
    p.add_argument("names", nargs="*")


def _dashboard(p: _Parser) -> None:
    p.add_argument("-w", "--workflow")
    p.add_argument("-v", "--views", type=_names, help="budget,dag,cache,decode")


def _control(p: _Parser) -> None:
    p.add_argument("workflow", nargs="?", help="default: every running workflow")


def _reset(p: _Parser) -> None:
    p.add_argument("workflow", nargs="?")
    p.add_argument("--steps", action="store_true", help="forget declared thunks and invariants")


def _help(p: _Parser) -> None:
    p.add_argument("verb", nargs="?")


def _nothing(p: _Parser) -> None:
    return None


def _replay(p: _Parser) -> None:
    p.add_argument("action", nargs="?", default="status", choices=["on", "off", "clear", "status"])


#: verb -> (args class, parser builder, one-line help)
VERBS: dict[str, tuple[type[Any], Callable[[_Parser], None], str]] = {
    "ask": (AskArgs, _ask, "a structured request through the router; body = prompt"),
    "budget": (BudgetArgs, _budget, "show ledgers, or set a workflow's ceiling Ω"),
    "thunk": (ThunkArgs, _thunk, "declare a lazy step; its body runs when forced"),
    "invariant": (InvariantArgs, _invariant, "declare an invariant or unit constraint"),
    "run": (RunArgs, _run, "force declared steps in dependency order, then check invariants"),
    "check": (CheckArgs, _check, "evaluate declared invariants now"),
    "status": (StatusArgs, _nothing, "ledgers, running requests, steps, invariants"),
    "dashboard": (DashboardArgs, _dashboard, "live budget, DAG, cache and decode views"),
    "pause": (ControlArgs, _control, "pause a workflow at its next layer, token or step"),
    "resume": (ControlArgs, _control, "resume a paused workflow"),
    "abort": (ControlArgs, _control, "abort a workflow's running request or run"),
    "preempt": (ControlArgs, _control, "preempt a workflow: pause it and mark its task preempted"),
    "reset": (ResetArgs, _reset, "zero a workflow's ledger, or forget declared steps"),
    "help": (HelpArgs, _help, "this help, or one verb's options"),
    "version": (VersionArgs, _nothing, "versions of coreason-lab and coreason-runtime"),
    "replay": (ReplayArgs, _replay, "this notebook's exact replay record: on, off, clear"),
    "debug": (DebugArgs, _nothing, "the full traceback of the last error"),
}


def build_parser(verb: str) -> _Parser:
    _, builder, summary = VERBS[verb]
    parser = _Parser(
        prog=f"%coreason {verb}",
        description=summary,
        add_help=False,
        allow_abbrev=False,
        exit_on_error=False,
    )
    builder(parser)
    return parser


def parse_line(line: str) -> tuple[str, Any]:
    """Split ``"<verb> <options>"`` into the verb and its typed arguments object.

    Raises
    ------
    UsageError
        For an empty line, an unknown verb (with the closest verbs), an unknown option (with
        the closest options), a value of the wrong type, or unbalanced quotes.
    """
    try:
        words = shlex.split(line, posix=True)
    except ValueError as e:
        msg = f"%coreason: cannot parse {line!r}: {e}"
        raise UsageError(msg) from e
    if not words:
        msg = "%coreason needs a verb: " + ", ".join(sorted(VERBS)) + " (try `%coreason help`)"
        raise UsageError(msg)
    verb, rest = words[0], words[1:]
    if verb not in VERBS:
        msg = (
            f"%coreason: unknown verb {verb!r}.{suggest(verb, list(VERBS))} "
            "Verbs: " + ", ".join(sorted(VERBS)) + "."
        )
        raise UsageError(msg)
    cls = VERBS[verb][0]
    parser = build_parser(verb)
    try:
        ns = parser.parse_args(rest)
    except argparse.ArgumentError as e:
        parser.error(str(e))
    known = {f.name for f in fields(cls)}
    return verb, cls(**{k: v for k, v in vars(ns).items() if k in known})

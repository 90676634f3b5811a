"""Lazy-of-Thought: ⟦name(args)⟧ thunks, cost estimates, and a demand-driven executor."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from coreason_runtime._events import EventType
from coreason_runtime._exceptions import DecodeError, ThunkError
from coreason_runtime.decode._repair import repair_span
from coreason_runtime.decode._sampler import Sampler
from coreason_runtime.decode._verify import THUNK_RE, Verdict, Verifier, locate_failures

if TYPE_CHECKING:
    from coreason_runtime.decode._engine import DecodeEngine
    from coreason_runtime.decode._session import DecodeSession

__all__ = ["DemandExecutor", "Expander", "ModelExpander", "Thunk", "parse_thunks", "thunkify"]

_OMITTED = re.compile(
    r"\((?:details|proof|steps|derivation|computation|algebra)?\s*omitted\)"
    r"|\(left as an exercise\)|\(details? skipped\)",
    re.I,
)


@dataclass
class Thunk:
    """A deferred step: ``⟦name(args)⟧`` in the text, expanded only on demand."""

    name: str
    args: str
    cost: int
    expansion: str | None = None
    forced: bool = False
    tokens_spent: int = 0
    deps: tuple[str, ...] = ()

    @property
    def placeholder(self) -> str:
        return f"⟦{self.name}({self.args})⟧" if self.args else f"⟦{self.name}⟧"


def parse_thunks(text: str) -> list[tuple[str, str, int, int]]:
    """``(name, args, char_start, char_end)`` of every ``⟦name(args)⟧`` in ``text``."""
    return [(m.group(1), m.group(2) or "", m.start(), m.end()) for m in THUNK_RE.finditer(text)]


def thunkify(text: str, *, prefix: str = "omitted") -> tuple[str, list[str]]:
    """Turn phrases like "(details omitted)" into thunks carrying the clause before them.

    Returns the new text and the names of the thunks created (``omitted_1``, ...).
    """
    names: list[str] = []

    def sub(m: re.Match[str]) -> str:
        before = text[: m.start()]
        clause = re.split(r"[.;:\n]", before)[-1].strip().rstrip(",")
        names.append(f"{prefix}_{len(names) + 1}")
        return f"⟦{names[-1]}({clause.replace('(', '[').replace(')', ']')})⟧"

    return _OMITTED.sub(sub, text), names


@runtime_checkable
class Expander(Protocol):
    """Produces the text that replaces a thunk, and estimates its cost in tokens first."""

    def estimate(self, thunk: Thunk) -> int: ...

    def expand(self, thunk: Thunk, context: str) -> tuple[str, int]:
        """The expansion text and the tokens it cost to produce."""
        ...


class ModelExpander:
    """Expands a thunk by decoding a short answer with the local model (greedy).

    ``template`` (the user turn) and ``assistant_prefix`` (the start of the answer, which
    steers a small model and is not part of the expansion) are formatted with ``name``,
    ``args`` and ``context``.
    """

    def __init__(
        self,
        engine: DecodeEngine,
        *,
        max_new_tokens: int = 32,
        template: str = "Compute {name}({args}). Reply with the result only.",
        assistant_prefix: str = "",
    ) -> None:
        self.engine = engine
        self.max_new_tokens = max_new_tokens
        self.template = template
        self.assistant_prefix = assistant_prefix

    def estimate(self, thunk: Thunk) -> int:
        return min(self.max_new_tokens, 8 + 2 * len(self.engine.encode(thunk.args)))

    def expand(self, thunk: Thunk, context: str) -> tuple[str, int]:
        fields = {"name": thunk.name, "args": thunk.args, "context": context}
        s = self.engine.generate(
            self.template.format(**fields),
            max_new_tokens=self.max_new_tokens,
            sampler=Sampler(),
            stop=("\n",),
            assistant_prefix=self.assistant_prefix.format(**fields),
        )
        return s.output_text.strip(), s.n_generated


class _CallableExpander:
    def __init__(self, fn: Callable[[Thunk, str], str], cost: int) -> None:
        self.fn, self.cost = fn, cost

    def estimate(self, thunk: Thunk) -> int:
        return self.cost or 8 + len(thunk.args) // 4

    def expand(self, thunk: Thunk, context: str) -> tuple[str, int]:
        return self.fn(thunk, context), 0


@dataclass
class DemandExecutor:
    """Forces thunks in a session only when something needs them, splicing the expansion in.

    A thunk is forced when a verifier reports it cannot check a step without it
    (:meth:`satisfy`), when a downstream line refers to it by name (:meth:`resolve`), or on
    an explicit :meth:`force`. The placeholder is replaced in the text and in the KV cache by
    :func:`repair_span`, so the session continues as if the expansion had always been there.

    Parameters
    ----------
    session:
        A paused or finished session whose context holds thunks.
    expanders:
        Per thunk name: an :class:`Expander` or a plain ``fn(thunk, context) -> str``.
    default:
        The expander for names not in ``expanders`` (None: such thunks raise ThunkError).
    """

    session: DecodeSession
    expanders: Mapping[str, Expander | Callable[[Thunk, str], str]] = field(default_factory=dict)
    default: Expander | None = None
    thunks: dict[str, Thunk] = field(default_factory=dict)

    def _expander(self, name: str) -> Expander:
        exp = self.expanders.get(name, self.default)
        if exp is None:
            msg = f"no expander for thunk {name!r}"
            raise ThunkError(msg)
        return exp if isinstance(exp, Expander) else _CallableExpander(exp, 0)

    def declare(self) -> list[Thunk]:
        """Find thunks in the session's context; new ones publish THUNK_DECLARED with a cost."""
        new = []
        text = self.session.text
        for name, args, c0, c1 in parse_thunks(text):
            if name in self.thunks:
                continue
            deps = tuple(n for n, *_ in parse_thunks(args)) + tuple(
                other for other in self.thunks if re.search(rf"\b{re.escape(other)}\b", args)
            )
            thunk = Thunk(name, args, 0, deps=deps)
            thunk.cost = (
                self._expander(name).estimate(thunk)
                if (name in self.expanders or self.default is not None)
                else 0
            )
            self.thunks[name] = thunk
            t0, t1 = self.session.char_span_to_tokens(c0, c1, base=0)
            self.session.emit(
                EventType.THUNK_DECLARED, name=name, args=args, start=t0, end=t1, cost=thunk.cost
            )
            new.append(thunk)
        return new

    @property
    def pending(self) -> list[str]:
        return [n for n, t in self.thunks.items() if not t.forced]

    @property
    def tokens_spent(self) -> int:
        return sum(t.tokens_spent for t in self.thunks.values())

    def force(self, name: str, *, why: str = "explicit", _stack: tuple[str, ...] = ()) -> str:
        """Expand thunk ``name`` (its dependencies first) and splice it in; returns the text."""
        if not self.thunks:
            self.declare()
        thunk = self.thunks.get(name)
        if thunk is None:
            msg = f"unknown thunk {name!r}; declared: {sorted(self.thunks)}"
            raise ThunkError(msg)
        if thunk.forced:
            return thunk.expansion or ""
        if name in _stack:
            msg = f"thunks depend on each other in a cycle: {' -> '.join((*_stack, name))}"
            raise ThunkError(msg)
        for dep in thunk.deps:
            self.force(dep, why=f"dependency of {name}", _stack=(*_stack, name))
        expander = self._expander(name)
        context = self.session.text
        try:
            expansion, spent = expander.expand(thunk, context)
        except Exception as e:
            msg = f"expanding thunk {name!r} failed: {type(e).__name__}: {e}"
            raise ThunkError(msg) from e
        self._splice(thunk, expansion)
        thunk.expansion, thunk.forced, thunk.tokens_spent = expansion, True, spent
        return expansion

    def _splice(self, thunk: Thunk, expansion: str) -> None:
        text = self.session.text
        spot = next(((c0, c1) for n, _, c0, c1 in parse_thunks(text) if n == thunk.name), None)
        if spot is None:
            msg = f"thunk {thunk.name!r} is no longer in the session's text"
            raise ThunkError(msg)
        c0, c1 = spot
        t0, t1 = self.session.char_span_to_tokens(c0, c1, base=0)
        covered = self.session.engine.text.text(self.session.tokens[t0:t1])
        local = covered.find(text[c0:c1])
        if local < 0:  # the tokens' text starts mid-character; splice by whole characters
            before = self.session.engine.text.text(self.session.tokens[:t0])
            local = c0 - len(before)
        replacement = covered[:local] + expansion + covered[local + (c1 - c0) :]
        try:
            result = repair_span(
                self.session, t0, t1, replacement=replacement, reason=f"thunk {thunk.name}"
            )
        except DecodeError as e:
            msg = f"splicing thunk {thunk.name!r} failed: {e}"
            raise ThunkError(msg) from e
        self.session.emit(
            EventType.THUNK_FORCED,
            name=thunk.name,
            start=t0,
            old_end=t1,
            new_end=result.new_end,
            cost=thunk.cost,
            expansion=expansion,
        )

    def satisfy(self, verifier: Verifier, *, max_rounds: int = 8) -> Verdict:
        """Run ``verifier``; force every thunk it says it needs, until it needs none."""
        self.declare()
        for _ in range(max_rounds):
            verdict, _ = locate_failures(self.session, verifier)
            needed = [
                n
                for n in dict.fromkeys(verdict.needs)
                if n in self.thunks and not self.thunks[n].forced
            ]
            if not needed:
                return verdict
            for n in needed:
                self.force(n, why=f"verifier {verifier.name}")
        return locate_failures(self.session, verifier)[0]

    def resolve(self, consumer: str | None = None) -> list[str]:
        """Force the thunks a downstream step refers to by name; returns the names forced.

        ``consumer`` is the downstream text (default: every line of the session's output
        after the line that declares the thunk).
        """
        self.declare()
        text = self.session.text
        forced = []
        for name, thunk in list(self.thunks.items()):
            if thunk.forced:
                continue
            if consumer is None:
                spot = next((c1 for n, _, _, c1 in parse_thunks(text) if n == name), None)
                nl = text.find("\n", spot) if spot is not None else -1
                downstream = THUNK_RE.sub("", text[nl:]) if nl >= 0 else ""
            else:
                downstream = THUNK_RE.sub("", consumer)
            if re.search(rf"\b{re.escape(name)}\b", downstream):
                self.force(name, why="downstream reference")
                forced.append(name)
                text = self.session.text
        return forced

    def force_all(self) -> list[str]:
        """Eager expansion (the baseline LoT is measured against)."""
        self.declare()
        names = self.pending
        for n in names:
            self.force(n, why="eager")
        return names


def expander(fn: Callable[[Thunk, str], str], cost: int = 0) -> Any:
    """Wrap ``fn(thunk, context) -> str`` as an :class:`Expander` with a fixed cost estimate."""
    return _CallableExpander(fn, cost)

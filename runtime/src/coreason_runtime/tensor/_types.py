"""The seam between the router and its tiers: requests, outputs, attempts, results, meters."""

from __future__ import annotations

import html
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from coreason_runtime._controls import Ticket

if TYPE_CHECKING:
    from coreason_runtime._events import EventBus
    from coreason_runtime.tensor._compiler import UniversalCompiler
    from coreason_runtime.tensor._schema import CompiledSchema, SchemaSpec
    from coreason_runtime.verify import RepairRecord, Verdict
    from coreason_runtime.verify._driver import Outcome, VerifyJob

__all__ = [
    "Attempt",
    "BaseTier",
    "BlackBoxTier",
    "FailureKind",
    "Messages",
    "Meter",
    "Result",
    "SteerableTier",
    "Tier",
    "TierOutput",
    "TierRequest",
    "UnmeteredMeter",
]

Messages = list[dict[str, str]]

T = TypeVar("T")


class FailureKind(StrEnum):
    """Why an attempt failed: what the correction policy builds the next attempt from."""

    TRUNCATED = "truncated"  # the output ran to max_tokens (or the grant) mid-value
    INVALID_JSON = "invalid_json"  # it ended, but is not JSON
    SCHEMA_VIOLATION = "schema_violation"  # JSON that the schema rejects
    VERIFIER_FAILURE = "verifier_failure"  # valid, but a verifier rejected it
    TIMEOUT = "timeout"
    DEAD_END = "dead_end"  # the grammar allowed no token the model could produce
    TRANSPORT = "transport"  # the tier could not be reached or its stream broke
    BUDGET = "budget"  # the ceiling was reached
    ABORTED = "aborted"  # an operator aborted the workflow
    COMPILE = "compile"  # no form of the schema for this tier: skipped
    CRASH = "crash"  # the tier raised something it should not have


class Attempt(BaseModel):
    """One try on one tier: what it cost and how it failed, if it did.

    ``failure`` classifies a failed attempt; ``max_tokens`` is the output limit it ran
    under (it grows after a truncation); ``repeat_of`` names an earlier failed attempt of
    the same tier whose output this one repeated token for token; ``closed`` says the
    local tier closed the value early (``"budget"``: before the tokens ran out,
    ``"repetition"``: a loop), so the answer may be shorter than the model wanted.
    """

    model_config = ConfigDict(frozen=True)

    tier: str
    index: int = Field(description="1-based attempt number within its tier")
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    ok: bool = False
    error: str | None = None
    error_type: str | None = None
    output: str | None = None
    model: str | None = None
    duration_s: float = 0.0
    skipped: bool = False
    failure: FailureKind | None = None
    max_tokens: int | None = None
    repeat_of: int | None = None
    closed: str | None = None


@dataclass
class Result(Generic[T]):
    """A validated answer with its provenance.

    ``value`` is an instance of the requested pydantic model (or a ``dict``/value for a raw
    JSON schema); ``tier`` is the tier that answered; ``attempts`` lists every attempt made on
    the way, failures included; ``cost`` is the total C charged for this call (span tiers'
    repairs included). ``closed`` is
    set when the local tier closed the value early (see :class:`Attempt`); the value was
    validated all the same.

    ``verified`` is true only when the request named verifiers (``verify=``) and every one of
    them passed this value; ``verification`` is their verdict (how each decided), ``repairs``
    every field repair tried on the way (accepted or not), in order. ``thunks`` are the lazy
    fields still holding a ``⟦name(args)⟧`` placeholder (pointer -> ``(name, args)``), unpaid
    until ``rt.router.force(result, pointer)``.
    ``replayed``: answered from the notebook's replay record (the recorded attempts, nothing
    charged).
    """

    value: T
    tier: str
    attempts: list[Attempt]
    cost: float
    workflow_id: str
    text: str = ""
    model: str | None = None
    seed: int | None = None
    schema_key: str | None = None
    revision: str | None = None
    verified: bool = False
    repairs: list[RepairRecord] = field(default_factory=list)
    verification: Verdict | None = None
    thunks: dict[str, tuple[str, str]] = field(default_factory=dict)
    closed: str | None = None
    replayed: bool = False

    @property
    def tokens_in(self) -> int:
        return sum(a.tokens_in for a in self.attempts)

    @property
    def tokens_out(self) -> int:
        return sum(a.tokens_out for a in self.attempts)

    def metadata(self) -> dict[str, Any]:
        """Provenance for notebook output metadata: no prompts, no keys."""
        return {
            "tier": self.tier,
            "model": self.model,
            "revision": self.revision,
            "seed": self.seed,
            "cost": self.cost,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "attempts": len(self.attempts),
            "workflow_id": self.workflow_id,
            "schema_key": self.schema_key,
            "verified": self.verified,
            "repairs": [
                {"field": r.field, "tier": r.tier, "accepted": r.accepted, "cost": r.cost}
                for r in self.repairs
            ],
            "replayed": self.replayed,
        }

    def _value_json(self) -> str:
        if isinstance(self.value, BaseModel):
            return self.value.model_dump_json(indent=2)
        return json.dumps(self.value, indent=2, default=str)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(a.tier)}</td><td>{a.index}</td><td>{a.tokens_in}</td>"
            f"<td>{a.tokens_out}</td><td>{a.cost:g}</td>"
            f"<td>{'ok' if a.ok else html.escape(a.error_type or ('skipped' if a.skipped else ''))}"
            f"</td></tr>"
            for a in self.attempts
        )
        return (
            f"<div class='coreason-result'><b>tier</b> {html.escape(self.tier)} · "
            f"<b>cost</b> {self.cost:g} · <b>workflow</b> {html.escape(self.workflow_id)}"
            f" · <b>model</b> {html.escape(str(self.model))}{self._verdict_html()}"
            f"{' · <b>replayed</b> (nothing charged)' if self.replayed else ''}"
            f"<pre>{html.escape(self._value_json())}</pre>"
            "<table><tr><th>tier</th><th>#</th><th>in</th><th>out</th><th>C</th><th>status</th>"
            f"</tr>{rows}</table>{self._repairs_html()}</div>"
        )

    def _verdict_html(self) -> str:
        if self.verification is None:
            return " · <b>unverified</b>"
        if self.verified:
            how = ", ".join(sorted(set(self.verification.methods.values())))
            return f" · <b style='color:#2ca02c'>verified</b> ({html.escape(how)})"
        return (
            f" · <b style='color:#d62728'>rejected</b>: {html.escape(self.verification.describe())}"
        )

    def _repairs_html(self) -> str:
        if not self.repairs:
            return ""
        rows = "".join(
            f"<tr><td>{html.escape(r.field)}</td><td>{html.escape(r.tier)}</td>"
            f"<td>{'accepted' if r.accepted else 'rejected'}</td><td>{r.candidates}</td>"
            f"<td>{r.tokens_in}</td><td>{r.tokens_out}</td><td>{r.cost:g}</td>"
            f"<td><code>{html.escape(r.old)}</code> → <code>{html.escape(r.new)}</code></td></tr>"
            for r in self.repairs
        )
        return (
            "<table class='coreason-repairs'><tr><th>field</th><th>tier</th><th>repair</th>"
            "<th>candidates</th><th>in</th><th>out</th><th>C</th><th>span</th></tr>"
            f"{rows}</table>"
        )

    def __repr__(self) -> str:
        verdict = "" if self.verification is None else f", verified={self.verified}"
        return (
            f"Result(tier={self.tier!r}, cost={self.cost:g}, attempts={len(self.attempts)}"
            f"{verdict}, value={self.value!r})"
        )


@dataclass
class TierRequest:
    """What a tier is asked: chat messages and the compiled schema its output must satisfy.

    ``ticket`` is the request's handle on the workflow controls. A steerable tier honours a
    pause and an abort through it itself (the local tier at every layer boundary); a black
    box gets a meter from the router that passes the ticket's checkpoint at every charge.
    """

    messages: Messages
    schema: CompiledSchema
    max_tokens: int
    workflow_id: str
    temperature: float = 0.0
    seed: int | None = None
    timeout: float | None = None
    attempt: int = 1
    ticket: Ticket = field(default_factory=Ticket.detached)
    verify: VerifyJob | None = None


@dataclass
class TierOutput:
    """What a tier produced, with the tokens it really consumed.

    ``finish_reason`` is ``"length"`` when the output ran out of tokens before it ended;
    ``closed`` says a steerable tier ended the value early itself (see :class:`Attempt`).
    """

    text: str
    tokens_in: int
    tokens_out: int
    model: str
    finish_reason: str = "stop"
    closed: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    verification: Outcome | None = None


@runtime_checkable
class Meter(Protocol):
    """Charges tokens as they are consumed; raises ``BudgetExceededError`` to stop a tier.

    ``max_out`` is how many output tokens the budget could still grant. A tier that can stop
    *before* consuming (a local decoder) calls :meth:`check` first and never overshoots; a
    stream that learns of tokens only when they arrive calls :meth:`charge` alone and
    overshoots by at most that chunk. Tokens charged are recorded even when the charge raises.

    A budget lease may *wait* (bounded) inside :meth:`check`, :meth:`charge` and
    :meth:`ensure` for requests in flight to give room back. Code that holds a lock other
    requests need in order to finish (the local model's lock) calls :meth:`ensure` *before*
    taking it, so that :meth:`check` and :meth:`charge` under the lock find the room there;
    ``interrupted`` lets a pause or an abort end the wait early.
    """

    @property
    def max_out(self) -> int: ...

    def ensure(
        self,
        tokens_in: int = 0,
        tokens_out: int = 0,
        *,
        interrupted: Callable[[], bool] | None = None,
    ) -> bool:
        """Make sure consuming this much more is covered; False if interrupted while waiting,
        ``BudgetExceededError`` if it cannot be."""
        ...

    def check(self, tokens_in: int = 0, tokens_out: int = 0) -> None: ...

    def charge(self, tokens_in: int = 0, tokens_out: int = 0) -> None: ...

    def correct(self, tokens_in: int, tokens_out: int) -> None:
        """Replace the counts charged so far by exact totals (a server's usage), up or down."""
        ...


class UnmeteredMeter:
    """A meter with no ceiling, for tiers used outside a workflow (benchmarks, ``serve``)."""

    def __init__(self, max_out: int = 1 << 30) -> None:
        self._max_out = max_out
        self.tokens_in = 0
        self.tokens_out = 0

    @property
    def max_out(self) -> int:
        return self._max_out - self.tokens_out

    def ensure(
        self,
        tokens_in: int = 0,
        tokens_out: int = 0,
        *,
        interrupted: Callable[[], bool] | None = None,
    ) -> bool:
        """Always covered: there is no ceiling."""
        return True

    def check(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        """Never refuses: there is no ceiling."""

    def charge(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out

    def correct(self, tokens_in: int, tokens_out: int) -> None:
        self.tokens_in, self.tokens_out = tokens_in, tokens_out


@runtime_checkable
class Tier(Protocol):
    """One way of answering a structured request: everything the router uses of a tier.

    Subclass :class:`SteerableTier` (masks logits with the compiled grammar, so its output
    always parses) or :class:`BlackBoxTier` (receives the schema in OpenAI's strict form and
    is validated afterwards); the router routes by that type. :class:`BaseTier` gives
    defaults for everything but :meth:`complete`.
    """

    name: str

    @property
    def model_name(self) -> str: ...

    def compile(self, spec: SchemaSpec) -> CompiledSchema: ...

    def count_prompt(self, messages: Messages, compiled: CompiledSchema | None = None) -> int: ...

    def complete(self, request: TierRequest, meter: Meter) -> TierOutput: ...

    def close(self) -> None: ...


_PORTABLE: dict[int, UniversalCompiler] = {}
_PORTABLE_LOCK = threading.Lock()


class BaseTier(ABC):
    """Defaults for the :class:`Tier` protocol; subclasses implement :meth:`complete`.

    ``bus`` (optional) receives the events of the default compiler.
    """

    name: str = "tier"
    bus: EventBus | None = None

    @property
    def model_name(self) -> str:
        """The model behind the tier, for attempts and results (default: the tier's name)."""
        return self.name

    @property
    def revision(self) -> str | None:
        """The exact weights behind :attr:`model_name`, when the tier knows them (replay keys)."""
        return None

    def compile(self, spec: SchemaSpec) -> CompiledSchema:
        """Every form of ``spec`` a tier may need, with no tokenizer: the OpenAI strict form, a
        regex, a portable grammar (cached per bus)."""
        with _PORTABLE_LOCK:
            compiler = _PORTABLE.get(id(self.bus))
            if compiler is None:
                from coreason_runtime.tensor._compiler import UniversalCompiler

                compiler = _PORTABLE[id(self.bus)] = UniversalCompiler(None, bus=self.bus)
        return compiler.compile(spec)

    def count_prompt(self, messages: Messages, compiled: CompiledSchema | None = None) -> int:
        """Prompt tokens to reserve for: a generous estimate without a tokenizer.

        About 3 characters a token plus chat framing; a server also puts the response schema
        into the prompt it bills for, and JSON is dense (about 2 characters a token), so the
        schema is counted too: learning the true count only from the final usage would let a
        tight ceiling be crossed by the whole schema.
        """
        base = sum(len(m["content"]) // 3 + 8 for m in messages)
        if compiled is None:
            return base
        schema = compiled.openai if compiled.openai is not None else compiled.spec.json_schema
        return base + len(json.dumps(schema, separators=(",", ":"))) // 2 + 16

    @abstractmethod
    def complete(self, request: TierRequest, meter: Meter) -> TierOutput:
        """Answer ``request``, charging ``meter`` as tokens are consumed."""

    def close(self) -> None:  # noqa: B027  # a default on purpose: most tiers hold nothing
        """Release what the tier holds (connections, models); the default holds nothing."""


class SteerableTier(BaseTier):
    """A tier that masks logits with ``request.schema.grammar``: its output always parses."""


class BlackBoxTier(BaseTier):
    """A tier that receives ``request.schema.openai`` and is validated afterwards."""

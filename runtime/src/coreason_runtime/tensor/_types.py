"""The seam between the router and its tiers: requests, outputs, attempts, results, meters."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from coreason_runtime.tensor._schema import CompiledSchema

__all__ = [
    "Attempt",
    "Meter",
    "Result",
    "SteerableTier",
    "Tier",
    "TierOutput",
    "TierRequest",
    "UnmeteredMeter",
]

T = TypeVar("T")


class Attempt(BaseModel):
    """One try on one tier: what it cost and how it failed, if it did."""

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


@dataclass
class Result(Generic[T]):
    """A validated answer with its provenance.

    ``value`` is an instance of the requested pydantic model (or a ``dict``/value for a raw
    JSON schema); ``tier`` is the tier that answered; ``attempts`` lists every attempt made on
    the way, failures included; ``cost`` is the total C charged for this call.
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
            f" · <b>model</b> {html.escape(str(self.model))}"
            f"<pre>{html.escape(self._value_json())}</pre>"
            "<table><tr><th>tier</th><th>#</th><th>in</th><th>out</th><th>C</th><th>status</th>"
            f"</tr>{rows}</table></div>"
        )

    def __repr__(self) -> str:
        return (
            f"Result(tier={self.tier!r}, cost={self.cost:g}, attempts={len(self.attempts)}, "
            f"value={self.value!r})"
        )


@dataclass
class TierRequest:
    """What a tier is asked: chat messages and the compiled schema its output must satisfy."""

    messages: list[dict[str, str]]
    schema: CompiledSchema
    max_tokens: int
    workflow_id: str
    temperature: float = 0.0
    seed: int | None = None
    timeout: float | None = None
    attempt: int = 1


@dataclass
class TierOutput:
    """What a tier produced, with the tokens it really consumed."""

    text: str
    tokens_in: int
    tokens_out: int
    model: str
    finish_reason: str = "stop"
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Meter(Protocol):
    """Charges tokens as they are consumed; raises ``BudgetExceededError`` to stop a tier.

    ``max_out`` is how many output tokens the reservation still allows; a steerable tier stops
    before exceeding it, a streaming tier stops at the chunk that crosses it. A meter may also
    offer ``checkpoint()`` (block while paused, raise to stop): the local tier then calls it
    at every decoder-layer boundary of its forward passes.
    """

    @property
    def max_out(self) -> int: ...

    def charge(self, tokens_in: int = 0, tokens_out: int = 0) -> None: ...


class UnmeteredMeter:
    """A meter with no ceiling, for tiers used outside a workflow (benchmarks, ``serve``)."""

    def __init__(self, max_out: int = 1 << 30) -> None:
        self._max_out = max_out
        self.tokens_in = 0
        self.tokens_out = 0

    @property
    def max_out(self) -> int:
        return self._max_out - self.tokens_out

    def charge(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out


@runtime_checkable
class Tier(Protocol):
    """One way of answering: ``complete(request, meter) -> TierOutput``.

    Black-box tiers (remote APIs) receive the schema in its OpenAI strict form and must be
    validated afterwards; see :class:`SteerableTier` for tiers that mask logits.
    """

    name: str

    def complete(self, request: TierRequest, meter: Meter) -> TierOutput: ...


@runtime_checkable
class SteerableTier(Tier, Protocol):
    """A tier that can mask logits with the compiled grammar, so its output always parses."""

    steerable: bool

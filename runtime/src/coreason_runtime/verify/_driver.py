"""Verifying one answer and repairing what its verifiers reject, field by field.

For each failing field, in the order the verifiers report them: the answer's own tier
re-decodes the field's span (K candidates on a temperature ladder, when the answer is a live
decode session); if none passes, the span tiers are asked for that field alone (a CAS, then
a remote tier) and their answer is spliced in; every candidate is judged by parsing the whole
answer, validating it and re-running the verifiers that read the field. What is still
rejected afterwards goes back to the router, which retries the whole request, then escalates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from coreason_runtime._exceptions import ValidationFailure
from coreason_runtime.verify._json import locate
from coreason_runtime.verify._lazy import lazy_pointers, pending_thunks
from coreason_runtime.verify._run import run_checks
from coreason_runtime.verify._span import span_schema
from coreason_runtime.verify._types import Check, Failure, RepairRecord, Verdict, VerifyPolicy

if TYPE_CHECKING:
    from coreason_runtime.tensor._schema import SchemaSpec
    from coreason_runtime.tensor._types import Meter

__all__ = ["Draft", "Escalate", "FieldAnswer", "FieldAsk", "Outcome", "VerifyJob"]

Accept = Callable[[str], bool]


@dataclass(frozen=True)
class FieldAsk:
    """A question about one field: what a span tier is given.

    ``value`` is the whole answer so far (JSON), ``pointer`` the field to produce, ``schema``
    its subschema, ``failures`` what the verifiers said about it, ``prompt`` the question.
    """

    pointer: str
    value: Any
    failures: tuple[Failure, ...]
    schema: dict[str, Any] | None
    checks: tuple[Check, ...]
    prompt: str
    timeout: float


@dataclass(frozen=True)
class FieldAnswer:
    """A span tier's answer: the field's value as JSON text, and what producing it cost."""

    value_text: str
    tier: str
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    seconds: float = 0.0


Escalate = Callable[[FieldAsk], Iterator[FieldAnswer]]


class Draft(Protocol):
    """An answer being repaired: a live decode session, or text."""

    @property
    def text(self) -> str: ...

    def redecode(
        self,
        pointer: str,
        sub: dict[str, Any],
        accept: Accept,
        policy: VerifyPolicy,
        meter: Meter,
        reason: str,
        thunk: str | None = None,
    ) -> RepairRecord | None: ...

    def replace(
        self,
        pointer: str,
        value_text: str,
        accept: Accept,
        tier: str,
        reason: str,
        meter: Meter | None = None,
        thunk: str | None = None,
    ) -> RepairRecord: ...


@dataclass
class Outcome:
    """The answer after verification and repair: its text, the final verdict (``None`` when
    the text does not validate, so nothing could be verified), every repair tried, and the
    lazy fields still holding a placeholder (pointer -> ``(name, args)``)."""

    text: str
    verdict: Verdict | None
    repairs: list[RepairRecord] = field(default_factory=list)
    thunks: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return self.verdict is not None and self.verdict.ok


@dataclass
class VerifyJob:
    """What a tier needs to verify its answer and repair it: the policy, the schema, the
    question, and the span tiers (``escalate``) for a field its candidates could not fix."""

    policy: VerifyPolicy
    spec: SchemaSpec
    prompt: str = ""
    escalate: Escalate | None = None

    def evaluate(self, text: str, touching: str | None = None) -> Verdict | None:
        """The verdict on ``text`` (``None`` if it does not validate against the schema)."""
        try:
            value = self.spec.validate_text(text)
        except ValidationFailure:
            return None
        return run_checks(self.policy.checks, value, timeout=self.policy.timeout, touching=touching)

    def run(
        self,
        draft: Draft,
        meter: Meter | None = None,
        checkpoint: Callable[[], None] | None = None,
    ) -> Outcome:
        """Verify ``draft``; repair each rejected field once (re-decode, then span tiers).

        ``meter`` pays for re-decoded tokens (``None``: no re-decoding); ``checkpoint`` runs
        between repairs (a paused workflow holds there, an aborted one raises).

        Raises
        ------
        VerifierError
            A verifier misbehaved (raised, returned garbage, named a missing field, timed out).
        BudgetExceededError, WorkflowAbortedError
            A repair was refused by the budget, or the workflow was aborted.
        """
        outcome = Outcome(draft.text, None)
        lazy = lazy_pointers(self.spec.json_schema)
        if lazy:
            self._force_read(draft, lazy, meter, outcome.repairs, checkpoint)
        verdict = self.evaluate(draft.text)
        outcome.text, outcome.verdict = draft.text, verdict
        outcome.thunks = pending_thunks(draft.text, lazy) if lazy else {}
        if verdict is None or verdict.ok or not self.policy.repair:
            return outcome
        tried: set[str] = set()
        while verdict is not None and not verdict.ok:
            pointer = next((p for p in verdict.fields() if p and p not in tried), None)
            if pointer is None:
                break  # whole-value failures and fields already tried: the router retries
            tried.add(pointer)
            if checkpoint is not None:
                checkpoint()
            failures = tuple(f for f in verdict.failures if f.pointer == pointer)
            self._repair(draft, pointer, failures, meter, outcome.repairs, checkpoint)
            verdict = self.evaluate(draft.text)
        outcome.text, outcome.verdict = draft.text, verdict
        outcome.thunks = pending_thunks(draft.text, lazy) if lazy else {}
        return outcome

    def _force_read(
        self,
        draft: Draft,
        lazy: list[str],
        meter: Meter | None,
        repairs: list[RepairRecord],
        checkpoint: Callable[[], None] | None,
    ) -> None:
        """Force the placeholders a verifier reads, through the field's repair path."""
        for pointer, (name, args) in pending_thunks(draft.text, lazy).items():
            if not any(c.reads is None or pointer in c.reads for c in self.policy.checks):
                continue  # nobody needs it yet: it stays a thunk, unpaid
            why = f"⟦{name}({args})⟧ forced: a verifier reads {pointer}"
            failure = Failure(pointer, why, "lazy")
            self._repair(draft, pointer, (failure,), meter, repairs, checkpoint, thunk=name)

    def _accept(self, pointer: str) -> Accept:
        def accept(text: str) -> bool:
            verdict = self.evaluate(text, touching=pointer)
            return verdict is not None and pointer not in verdict.fields()

        return accept

    def _repair(
        self,
        draft: Draft,
        pointer: str,
        failures: tuple[Failure, ...],
        meter: Meter | None,
        repairs: list[RepairRecord],
        checkpoint: Callable[[], None] | None,
        thunk: str | None = None,
    ) -> None:
        reason = "; ".join(f.message for f in failures)
        accept = self._accept(pointer)
        sub = span_schema(self.spec.json_schema, pointer, self.policy.checks)
        if sub is not None and meter is not None and self.policy.candidates:
            record = draft.redecode(pointer, sub, accept, self.policy, meter, reason, thunk)
            if record is not None:
                repairs.append(record)
                if record.accepted:
                    return
        if self.escalate is None:
            return
        ask = FieldAsk(
            pointer,
            locate(draft.text)[0],
            failures,
            sub,
            self.policy.checks,
            self.prompt,
            self.policy.timeout,
        )
        for answer in self.escalate(ask):
            record = draft.replace(
                pointer, answer.value_text, accept, answer.tier, reason, meter, thunk
            )
            repairs.append(
                record.model_copy(
                    update={
                        "tokens_in": answer.tokens_in,
                        "tokens_out": answer.tokens_out,
                        "cost": answer.cost,
                        "seconds": answer.seconds,
                    }
                )
            )
            if record.accepted:
                return
            if checkpoint is not None:
                checkpoint()

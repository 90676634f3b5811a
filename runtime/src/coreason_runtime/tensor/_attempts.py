"""One tier of a request: the correction loop, each attempt metered under the budget cage.

The router walks its cascade; for each tier :class:`TierRunner` compiles the schema for it,
then tries up to k_max times (tenacity), feeding the last failure back. Every attempt holds a
reservation from the :class:`~coreason_runtime.budget.BudgetCage` that is settled exactly once,
whatever ends it — success, a typed failure, a crash inside the tier, or a ``KeyboardInterrupt``.
A crossed ceiling and an operator's abort end the request at once: no retry, no escalation.

Every failed attempt is classified (:class:`FailureKind`) and the next one built from the
class (:func:`~coreason_runtime.tensor._correction.next_try`): a truncated answer gets more
room when Ω allows, else a request to answer shorter, else the tier is left, so no attempt
repeats an earlier one (a retry differs in its messages, its limit or its sampling); an
output that repeats an earlier failed one token for token is marked (``repeat_of``) and
ends the tier: it gave the same answer to a changed request, so no request built from it can
be told apart in what it buys, and the same failed tokens are never paid for a third time.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coreason_runtime._controls import ControlledMeter
from coreason_runtime._events import EventBus, EventType
from coreason_runtime._exceptions import (
    BudgetExceededError,
    CoreasonError,
    LedgerBackendError,
    TierError,
    ValidationFailure,
    VerifierError,
    WorkflowAbortedError,
)
from coreason_runtime._signals import interrupt_note
from coreason_runtime.tensor._correction import Outcome, Try, classify, next_try, retry_policy
from coreason_runtime.tensor._types import (
    Attempt,
    FailureKind,
    Messages,
    Result,
    SteerableTier,
    Tier,
    TierOutput,
    TierRequest,
)
from coreason_runtime.verify._lazy import grammar_spec, lazy_pointers, pending_thunks

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from coreason_runtime._controls import Ticket
    from coreason_runtime.budget import BudgetCage
    from coreason_runtime.tensor._schema import CompiledSchema, SchemaSpec
    from coreason_runtime.tensor._verified import SpanGate
    from coreason_runtime.verify import Failure, RepairRecord, VerifyPolicy
    from coreason_runtime.verify._driver import Outcome as VerifyOutcome
    from coreason_runtime.verify._driver import VerifyJob
    from coreason_runtime.verify._tools import FieldTier

__all__ = ["Conversation", "RequestPlan", "TierRunner"]


@dataclass
class Conversation:
    """The mutable state of one request across attempts: the messages and every attempt;
    with verifiers, every field repair, the C of span tiers (charged beside the attempts)
    and the last verification failures.

    ``next`` is the next attempt's arguments on the current tier (``None``: leave it);
    ``outputs`` maps every failed output of the current tier to its attempt.
    """

    messages: Messages
    attempts: list[Attempt] = field(default_factory=list)
    repairs: list[RepairRecord] = field(default_factory=list)
    side_cost: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    next: Try | None = None
    outputs: dict[str, int] = field(default_factory=dict)

    @property
    def cost(self) -> float:
        return sum(a.cost for a in self.attempts) + self.side_cost


GROWTH_CAP = 4  # max_tokens grows after a truncation to at most this times the request's


@dataclass(frozen=True)
class RequestPlan:
    """What stays fixed for one request across its tiers and attempts."""

    workflow_id: str
    prompt: str
    ticket: Ticket
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    timeout: float | None = None
    verify: VerifyPolicy | None = None


class TierRunner:
    """Runs one request on one tier: compile, then attempts under the correction policy.

    Parameters
    ----------
    budgets:
        Every attempt's reservation comes from here.
    bus:
        Where ``attempt.*`` and ``request.failed`` events go.
    compile:
        ``compile(spec, tier) -> CompiledSchema``.
    max_attempts:
        k_max: tries per tier, counting the first, for retryable failures.
    span_tiers:
        With ``plan.verify``: the tiers asked for a field the answer's own candidates could
        not fix (``tensor._verified.field_tiers``).
    span_gate:
        Judges each of those span escalations (``tensor._verified.SpanGate``); None: all go.
    """

    def __init__(
        self,
        budgets: BudgetCage,
        bus: EventBus,
        compile: Callable[[SchemaSpec, Tier], CompiledSchema],
        max_attempts: int,
        span_tiers: Sequence[FieldTier] = (),
        span_gate: SpanGate | None = None,
    ) -> None:
        self.budgets = budgets
        self.bus = bus
        self.compile = compile
        self.max_attempts = max_attempts
        self.span_tiers = list(span_tiers)
        self.span_gate = span_gate

    def run(
        self, tier: Tier, spec: SchemaSpec, conv: Conversation, plan: RequestPlan
    ) -> Result[Any] | None:
        """The tier's answer, or ``None`` to escalate (every failure is in ``conv.attempts``).

        Raises
        ------
        BudgetExceededError, LedgerBackendError, WorkflowAbortedError
            The ceiling was reached, the ledger store failed, or an operator aborted: the
            request ends here.
        VerifierError
            A verifier misbehaved: a bug to fix, neither retried nor escalated.
        """
        steerable = isinstance(tier, SteerableTier)
        try:  # a steerable tier may write a placeholder in a lazy field
            compiled = self.compile(grammar_spec(spec) if steerable else spec, tier)
        except CoreasonError as e:
            self._record_skip(conv, tier, plan.workflow_id, e)
            return None
        form = compiled.grammar if steerable else compiled.openai
        missing = compiled.errors.get("grammar" if steerable else "openai")
        if form is None and missing is not None:
            self._record_skip(conv, tier, plan.workflow_id, missing)
            return None
        conv.messages = [conv.messages[0], {"role": "user", "content": plan.prompt}]
        conv.next, conv.outputs = Try(conv.messages, plan.max_tokens), {}
        index = 0
        try:
            for attempt in retry_policy(self.max_attempts, lambda: conv.next is not None):
                with attempt:
                    index += 1
                    return self._attempt(tier, compiled, conv, plan, index)
        except (BudgetExceededError, LedgerBackendError, WorkflowAbortedError, VerifierError) as e:
            # a crossed ceiling, a failing ledger store, an operator's abort, a broken
            # verifier: no tier can help
            e.attempts = list(conv.attempts)
            self.bus.emit(
                EventType.REQUEST_FAILED,
                workflow_id=plan.workflow_id,
                source="router",
                tier=tier.name,
                error_type=type(e).__name__,
            )
            raise
        except CoreasonError:
            return None  # recorded in conv.attempts; escalate
        return None

    def _attempt(
        self,
        tier: Tier,
        compiled: CompiledSchema,
        conv: Conversation,
        plan: RequestPlan,
        index: int,
    ) -> Result[Any]:
        wf = plan.workflow_id
        steerable = isinstance(tier, SteerableTier)
        job = self._job(compiled, conv, plan)
        this = conv.next or Try(conv.messages, plan.max_tokens)
        # A greedy retry of a small model tends to repeat its wrong answer even with the
        # error fed back: later attempts sample (T rises by 0.4 a retry, seeds differ).
        request = TierRequest(
            messages=list(this.messages),
            schema=compiled,
            max_tokens=this.max_tokens,
            workflow_id=wf,
            temperature=max(plan.temperature, 0.4 * (index - 1)),
            seed=plan.seed if index == 1 else (plan.seed or 0) + index - 1,
            timeout=plan.timeout,
            attempt=index,
            ticket=plan.ticket,
            verify=job if steerable else None,
        )
        plan.ticket.checkpoint()  # a paused workflow holds here, before reserving anything
        self.bus.emit(
            EventType.ATTEMPT_STARTED,
            workflow_id=wf,
            source="router",
            tier=tier.name,
            attempt=index,
        )
        t0 = time.monotonic()
        # span re-decodes in the tier's session are paid from the attempt's own grant
        room = job.policy.repair_tokens if job is not None and steerable else 0
        prompt_tokens = tier.count_prompt(request.messages, compiled)
        meter = self.budgets.open(wf, prompt_tokens, request.max_tokens + room, tier.name)
        output: TierOutput | None = None
        outcome: VerifyOutcome | None = None
        # A steerable tier honours the ticket inside its forward passes; a black box is held
        # and stopped at its next metered chunk.
        metered = meter if steerable else ControlledMeter(meter, plan.ticket)
        try:
            output = tier.complete(request, metered)
            answer = _from_strict(tier, compiled, output.text)
            value = compiled.validate_text(answer)
            if job is not None:
                from coreason_runtime.tensor._verified import finish_verification

                outcome = finish_verification(
                    job, tier, output, answer, conv, plan, self.budgets, self.bus, index
                )
                if outcome.text != answer:
                    value = compiled.validate_text(outcome.text)
        except CoreasonError as e:
            e.tier = e.tier or tier.name
            e.workflow_id = e.workflow_id or wf
            meter.settle()
            self._after_failure(tier, conv, plan, index, meter, e, output, t0)
            raise
        except Exception as e:  # a tier bug must not leak the reservation or crash the cascade
            meter.settle()
            msg = f"tier {tier.name!r} crashed: {type(e).__name__}: {e}"
            wrapped = TierError(msg, tier=tier.name, workflow_id=wf)
            self._record_failure(
                conv, tier, plan, index, meter, wrapped, None, time.monotonic() - t0
            )
            conv.next = None
            raise wrapped from e
        except BaseException as e:  # Ctrl-C, SystemExit: charge what ran, hold nothing, re-raise
            meter.settle(note="interrupted")
            facts = {"tokens_out": meter.tokens_out, "cost": meter.consumed, "tier": tier.name}
            interrupt_note(e, workflow_id=wf, **facts)
            raise
        meter.settle()
        return self._success(tier, compiled, conv, plan, index, meter, output, value, t0, outcome)

    def _job(
        self, compiled: CompiledSchema, conv: Conversation, plan: RequestPlan
    ) -> VerifyJob | None:
        """What the attempt's answer is verified with (None: the request has no verifiers)."""
        if plan.verify is None:
            return None
        from coreason_runtime.tensor._verified import SpanTiers
        from coreason_runtime.verify._driver import VerifyJob

        spans = SpanTiers(self.span_tiers, self.budgets, plan, conv, self.span_gate)
        return VerifyJob(plan.verify, compiled.spec, plan.prompt, spans if spans.tiers else None)

    def _after_failure(
        self,
        tier: Tier,
        conv: Conversation,
        plan: RequestPlan,
        index: int,
        meter: Any,
        error: CoreasonError,
        output: TierOutput | None,
        t0: float,
    ) -> None:
        """Record a failed attempt with its class, and plan the next one (``conv.next``)."""
        text = output.text if output is not None else _output_of(error)
        kind = classify(error, output)
        repeat_of = conv.outputs.get(text) if text else None
        self._record_failure(
            conv,
            tier,
            plan,
            index,
            meter,
            error,
            text,
            time.monotonic() - t0,
            kind=kind,
            repeat_of=repeat_of,
            closed=output.closed if output is not None else None,
        )
        if text:
            conv.outputs.setdefault(text, index)
        this = conv.next or Try(conv.messages, plan.max_tokens)
        room = self._room(plan.workflow_id, tier.name, meter.estimated_in)  # the same prompt
        cap = GROWTH_CAP * plan.max_tokens
        conv.next = next_try(this, Outcome(kind, error, room, cap, repeat_of=repeat_of))
        if conv.next is not None:
            conv.messages = conv.next.messages

    def _room(self, workflow_id: str, tier: str, prompt_tokens: int) -> int | None:
        """Output tokens Ω can still fund on ``tier`` (at its own weights) after a prompt of
        ``prompt_tokens`` (None: no Ω)."""
        left = self.budgets.remaining(workflow_id)
        if math.isinf(left):
            return None
        w_in, w_out = self.budgets.weights(tier)
        return max(math.floor((left - w_in * prompt_tokens) / w_out + 1e-9), 0)

    def _success(
        self,
        tier: Tier,
        compiled: CompiledSchema,
        conv: Conversation,
        plan: RequestPlan,
        index: int,
        meter: Any,
        output: TierOutput,
        value: Any,
        t0: float,
        outcome: VerifyOutcome | None = None,
    ) -> Result[Any]:
        attempt = Attempt(
            tier=tier.name,
            index=index,
            tokens_in=meter.tokens_in,
            tokens_out=meter.tokens_out,
            cost=meter.consumed,
            ok=True,
            output=output.text,
            model=output.model,
            duration_s=time.monotonic() - t0,
            max_tokens=conv.next.max_tokens if conv.next is not None else plan.max_tokens,
            closed=output.closed,
        )
        conv.attempts.append(attempt)
        self.bus.emit(
            EventType.ATTEMPT_FINISHED,
            workflow_id=plan.workflow_id,
            source="router",
            tier=tier.name,
            attempt=index,
            tokens_in=attempt.tokens_in,
            tokens_out=attempt.tokens_out,
            cost=attempt.cost,
            closed=attempt.closed,
        )
        return Result(
            value=value,
            tier=tier.name,
            attempts=list(conv.attempts),
            cost=conv.cost,
            workflow_id=plan.workflow_id,
            text=outcome.text if outcome is not None else output.text,
            model=output.model,
            seed=plan.seed,
            schema_key=compiled.key,
            revision=output.extra.get("revision"),
            verified=outcome is not None and outcome.verified,
            repairs=list(conv.repairs),
            verification=outcome.verdict if outcome is not None else None,
            thunks=(
                outcome.thunks
                if outcome is not None
                else pending_thunks(output.text, lazy_pointers(compiled.spec.json_schema))
            ),
            closed=output.closed,
        )

    def _record_failure(
        self,
        conv: Conversation,
        tier: Tier,
        plan: RequestPlan,
        index: int,
        meter: Any,
        error: CoreasonError,
        output: str | None,
        duration: float,
        *,
        kind: FailureKind = FailureKind.CRASH,
        repeat_of: int | None = None,
        closed: str | None = None,
    ) -> None:
        attempt = Attempt(
            tier=tier.name,
            index=index,
            tokens_in=meter.tokens_in,
            tokens_out=meter.tokens_out,
            cost=meter.consumed,
            ok=False,
            error=error.message[:2000],
            error_type=type(error).__name__,
            output=output,
            model=tier.model_name,
            duration_s=duration,
            failure=kind,
            max_tokens=conv.next.max_tokens if conv.next is not None else plan.max_tokens,
            repeat_of=repeat_of,
            closed=closed,
        )
        conv.attempts.append(attempt)
        self.bus.emit(
            EventType.ATTEMPT_FAILED,
            workflow_id=plan.workflow_id,
            source="router",
            tier=tier.name,
            attempt=index,
            error_type=attempt.error_type,
            error=attempt.error,
            cost=attempt.cost,
            retryable=error.retryable,
            failure=kind.value,
        )

    def _record_skip(self, conv: Conversation, tier: Tier, wf: str, error: CoreasonError) -> None:
        attempt = Attempt(
            tier=tier.name,
            index=0,
            ok=False,
            skipped=True,
            error=error.message,
            error_type=type(error).__name__,
            failure=FailureKind.COMPILE,
        )
        conv.attempts.append(attempt)
        self.bus.emit(
            EventType.ATTEMPT_FAILED,
            workflow_id=wf,
            source="router",
            tier=tier.name,
            attempt=0,
            error_type=attempt.error_type,
            error=attempt.error,
            skipped=True,
            cost=0.0,
            retryable=False,
            failure=FailureKind.COMPILE.value,
        )


def _output_of(error: CoreasonError) -> str | None:
    return error.output if isinstance(error, ValidationFailure) else None


def _from_strict(tier: Tier, compiled: CompiledSchema, text: str) -> str:
    """Undo OpenAI strict mode's forced nulls in optional fields before validation."""
    if isinstance(tier, SteerableTier) or compiled.openai is None:
        return text
    from coreason_runtime.tensor._openai_strict import denullify

    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text  # validation reports it, with the exact error
    return json.dumps(denullify(value, compiled.spec.json_schema))

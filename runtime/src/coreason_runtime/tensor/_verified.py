"""Verification on the request path: the router's side of ``generate(..., verify=...)``.

Per attempt the router hands a steerable tier a :class:`~coreason_runtime.verify._driver.
VerifyJob` (it repairs rejected fields in its own decode session before letting go of it);
any other answer is verified here after the fact. Both ask the same span tiers for a field
their own candidates could not fix — tool tiers (the CAS) first, then a field question to
each remote tier of the cascade — each under its own reservation. A value still rejected
becomes a :class:`VerificationFailure`: the correction loop feeds the failures back and
retries the whole request, then the cascade escalates.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from coreason_runtime._controls import ControlledMeter
from coreason_runtime._events import EventBus, EventType
from coreason_runtime._exceptions import (
    BudgetExceededError,
    CoreasonError,
    VerificationFailure,
    WorkflowAbortedError,
)
from coreason_runtime.tensor._schema import SchemaSpec
from coreason_runtime.tensor._types import BlackBoxTier, Tier, TierOutput, TierRequest
from coreason_runtime.verify._driver import FieldAnswer, FieldAsk, Outcome, VerifyJob
from coreason_runtime.verify._span import TextDraft
from coreason_runtime.verify._tools import FieldTier

if TYPE_CHECKING:
    from collections.abc import Callable

    from coreason_runtime.budget import BudgetCage
    from coreason_runtime.tensor._attempts import Conversation, RequestPlan
    from coreason_runtime.tensor._router import TensorRouter
    from coreason_runtime.tensor._schema import CompiledSchema
    from coreason_runtime.tensor._types import Meter, Result
    from coreason_runtime.verify import VerifyPolicy

__all__ = ["RemoteFieldTier", "SpanTiers", "field_tiers", "finish_verification"]

_FIELD_PROMPT = (
    "Question: {prompt}\n"
    "Answer so far (JSON): {value}\n"
    "The field {pointer} is wrong: {why}\n"
    'Reply with the corrected value of {pointer} only, as {{"value": ...}}.'
)


class RemoteFieldTier(FieldTier):
    """A black-box tier asked for one field only, with the rest of the value as context."""

    def __init__(
        self,
        tier: Tier,
        compile: Callable[[SchemaSpec, Tier], CompiledSchema],
        plan: RequestPlan,
        max_tokens: int = 128,
    ) -> None:
        self.tier = tier
        self.name = tier.name
        self._compile = compile
        self._plan = plan
        self.max_tokens = max_tokens

    def _spec(self, ask: FieldAsk) -> SchemaSpec:
        sub: dict[str, Any] = dict(ask.schema or {"type": "string"})
        defs: dict[str, Any] = {k: sub.pop(k) for k in ("$defs", "definitions") if k in sub}
        wrapped: dict[str, Any] = {
            "title": "Field",
            "type": "object",
            "properties": {"value": sub},
            "required": ["value"],
            "additionalProperties": False,
            **defs,
        }
        return SchemaSpec.from_user(wrapped)

    def _messages(self, ask: FieldAsk) -> list[dict[str, str]]:
        why = "; ".join(f.message for f in ask.failures) or "a verifier rejected it"
        user = _FIELD_PROMPT.format(
            prompt=ask.prompt, value=json.dumps(ask.value), pointer=ask.pointer, why=why
        )
        return [{"role": "user", "content": user}]

    def estimate(self, ask: FieldAsk) -> tuple[int, int]:
        compiled = self._compile(self._spec(ask), self.tier)
        return self.tier.count_prompt(self._messages(ask), compiled), self.max_tokens

    def answer_field(self, ask: FieldAsk, meter: Meter) -> FieldAnswer | None:
        compiled = self._compile(self._spec(ask), self.tier)
        plan = self._plan
        request = TierRequest(
            messages=self._messages(ask),
            schema=compiled,
            max_tokens=self.max_tokens,
            workflow_id=plan.workflow_id,
            seed=plan.seed,
            timeout=plan.timeout,
            ticket=plan.ticket,
        )
        output = self.tier.complete(request, ControlledMeter(meter, plan.ticket))
        from coreason_runtime.tensor._attempts import _from_strict

        value = compiled.validate_text(_from_strict(self.tier, compiled, output.text))
        return FieldAnswer(json.dumps(value["value"], ensure_ascii=False), self.name)


def field_tiers(
    policy: VerifyPolicy,
    tools: Sequence[FieldTier],
    cascade: Sequence[Tier],
    compile: Callable[[SchemaSpec, Tier], CompiledSchema],
    plan: RequestPlan,
) -> list[FieldTier]:
    """The span tiers of a request, in order: tool tiers, then each black-box tier of the
    cascade asked for the field; ``policy.span_tiers`` picks and orders them by name."""
    tiers: list[FieldTier] = list(tools)
    tiers += [RemoteFieldTier(t, compile, plan) for t in cascade if isinstance(t, BlackBoxTier)]
    if policy.span_tiers is None:
        return tiers
    by_name = {t.name: t for t in tiers}
    return [by_name[n] for n in policy.span_tiers if n in by_name]


class SpanTiers:
    """The ``escalate`` of a request's jobs: asks each span tier in turn, each under its own
    reservation (settled before its answer is handed back); their C is the request's too."""

    def __init__(
        self,
        tiers: Sequence[FieldTier],
        budgets: BudgetCage,
        plan: RequestPlan,
        conv: Conversation,
    ) -> None:
        self.tiers = list(tiers)
        self.budgets = budgets
        self.plan = plan
        self.conv = conv

    def __call__(self, ask: FieldAsk) -> Iterator[FieldAnswer]:
        for tier in self.tiers:
            self.plan.ticket.checkpoint()
            answer = self._ask(tier, ask)
            if answer is not None:
                yield answer

    def _ask(self, tier: FieldTier, ask: FieldAsk) -> FieldAnswer | None:
        tokens_in, max_out = tier.estimate(ask)
        meter = self.budgets.open(self.plan.workflow_id, tokens_in, max(1, max_out), tier.name)
        t0 = time.perf_counter()
        answer: FieldAnswer | None = None
        try:
            answer = tier.answer_field(ask, meter)
        except (BudgetExceededError, WorkflowAbortedError):
            raise
        except CoreasonError:  # the tier could not answer (validation, transport): next one
            answer = None
        finally:
            meter.settle()
            self.conv.side_cost += meter.consumed
        if answer is None:
            return None
        return replace(
            answer,
            tokens_in=meter.tokens_in,
            tokens_out=meter.tokens_out,
            cost=meter.consumed,
            seconds=time.perf_counter() - t0,
        )


def finish_verification(
    job: VerifyJob,
    tier: Tier,
    output: TierOutput,
    text: str,
    conv: Conversation,
    plan: RequestPlan,
    budgets: BudgetCage,
    bus: EventBus,
    index: int,
) -> Outcome:
    """The verdict on an attempt's answer (the tier's own, or verified here on ``text``);
    repairs recorded and announced.

    Raises
    ------
    VerificationFailure
        A verifier still rejects the answer: retried whole with the failures fed back.
    """
    outcome = output.verification
    if outcome is None:
        outcome = job.run(TextDraft(text), checkpoint=plan.ticket.checkpoint)
    records = [
        r.model_copy(update={"cost": budgets.cost(r.tokens_in, r.tokens_out)})
        if r.tier == "local"
        else r
        for r in outcome.repairs
    ]
    outcome.repairs = records
    conv.repairs.extend(records)
    wf = plan.workflow_id
    for r in records:
        bus.emit(
            EventType.FIELD_REPAIRED,
            workflow_id=wf,
            source="router",
            field=r.field,
            tier=r.tier,
            accepted=r.accepted,
            tokens_in=r.tokens_in,
            tokens_out=r.tokens_out,
            cost=r.cost,
            candidates=r.candidates,
            old=r.old,
            new=r.new,
            reason=r.reason,
        )
    verdict = outcome.verdict
    bus.emit(
        EventType.REQUEST_VERIFIED,
        workflow_id=wf,
        source="router",
        tier=tier.name,
        attempt=index,
        verified=outcome.verified,
        failures=[f.describe() for f in verdict.failures] if verdict is not None else [],
        methods=dict(verdict.methods) if verdict is not None else {},
        repairs=len(records),
    )
    if not outcome.verified:
        failures = verdict.failures if verdict is not None else []
        conv.failures = list(failures)
        detail = "; ".join(f.describe() for f in failures) or "the answer does not validate"
        msg = f"the answer failed verification: {detail}"
        raise VerificationFailure(
            msg, output=outcome.text, failures=failures, repairs=records, tier=tier.name
        )
    return outcome


def force_thunk(
    router: TensorRouter, result: Result[Any], pointer: str, **options: Any
) -> Result[Any]:
    """``router.force``: a sub-request for one lazy field of ``result``, spliced into its value.

    The field's own schema (its placeholder alternative removed) is asked for with the thunk's
    name and arguments as the question; the new Result carries both requests' attempts and C.
    """
    from dataclasses import replace as replace_result

    from pydantic import BaseModel

    from coreason_runtime._exceptions import RequestError
    from coreason_runtime.verify._json import pointer_parts, subschema
    from coreason_runtime.verify._types import as_value, normalise_pointer

    pointer = normalise_pointer(pointer)
    if pointer not in result.thunks:
        msg = f"{pointer!r} holds no thunk; pending: {sorted(result.thunks) or 'none'}"
        raise RequestError(msg)
    if not isinstance(result.value, BaseModel):
        msg = "force() needs a result whose value is a pydantic model (its schema is the model's)"
        raise RequestError(msg)
    spec = SchemaSpec.from_user(type(result.value))
    field = subschema(spec.json_schema, pointer) or {"type": "string"}
    name, args = result.thunks[pointer]
    wrapped = {
        "title": name,
        "type": "object",
        "properties": {"value": {k: v for k, v in field.items() if k != "lazy"}},
        "required": ["value"],
    }
    options.setdefault("workflow_id", result.workflow_id)
    sub = router.generate(wrapped, f"Compute {name}({args}). Give its value only.", **options)
    value = as_value(result.value)
    node = value
    parts = pointer_parts(pointer)
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(parts[-1]) if isinstance(node, list) else parts[-1]] = sub.value["value"]
    return replace_result(
        result,
        value=spec.validate_value(value),
        attempts=[*result.attempts, *sub.attempts],
        cost=result.cost + sub.cost,
        thunks={p: t for p, t in result.thunks.items() if p != pointer},
    )

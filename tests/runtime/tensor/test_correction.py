"""Truncation-aware correction: every failure classified, a truncation never retried unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from coreason_runtime import (
    Coordinator,
    EpistemicYieldError,
    GrammarDeadEndError,
    ProtocolError,
    SchemaCompileError,
    TierTimeoutError,
    ValidationFailure,
    VerifierError,
)
from coreason_runtime.tensor import (
    Meter,
    SchemaSpec,
    ScriptedTier,
    SteerableTier,
    TierOutput,
    TierRequest,
)
from coreason_runtime.tensor._correction import SHORTER, Outcome, Try, classify, next_try
from coreason_runtime.tensor._types import FailureKind
from pydantic import BaseModel


class Derivative(BaseModel):
    expression: str
    derivative: str


GOOD = '{"expression": "x**2", "derivative": "2*x"}'  # four scripted tokens


@pytest.fixture
def rt(home) -> Iterator[Coordinator]:
    runtime = Coordinator()
    runtime.budgets.set("wf", ceiling=10_000)
    yield runtime
    runtime.close()


def _out(finish: str) -> TierOutput:
    return TierOutput(text='{"a": ', tokens_in=1, tokens_out=1, model="m", finish_reason=finish)


@pytest.mark.parametrize(
    ("error", "output", "kind"),
    [
        (ValidationFailure("x", invalid_json=True), _out("length"), FailureKind.TRUNCATED),
        (ValidationFailure("x", invalid_json=True), _out("stop"), FailureKind.INVALID_JSON),
        (ValidationFailure("x"), _out("stop"), FailureKind.SCHEMA_VIOLATION),
        (VerifierError("x"), None, FailureKind.VERIFIER_FAILURE),
        (TierTimeoutError("x"), None, FailureKind.TIMEOUT),
        (GrammarDeadEndError("x"), None, FailureKind.DEAD_END),
        (ProtocolError("x"), None, FailureKind.TRANSPORT),
        (SchemaCompileError("x"), None, FailureKind.COMPILE),
    ],
)
def test_every_failure_is_classified(
    error: Exception, output: TierOutput | None, kind: FailureKind
) -> None:
    assert classify(error, output) is kind  # type: ignore[arg-type]


def test_a_parse_error_says_the_output_was_not_json() -> None:
    spec = SchemaSpec.from_user(Derivative)
    with pytest.raises(ValidationFailure) as bad:
        spec.validate_text('{"expression": ')
    assert bad.value.invalid_json
    with pytest.raises(ValidationFailure) as wrong:
        spec.validate_text('{"expression": "x"}')
    assert not wrong.value.invalid_json


MSGS = [{"role": "user", "content": "q"}]
CUT = ValidationFailure("cut", invalid_json=True)


def test_a_truncation_doubles_the_limit_without_a_ceiling() -> None:
    nxt = next_try(Try(MSGS, 100), Outcome(FailureKind.TRUNCATED, CUT, None, 400))
    assert nxt == Try(MSGS, 200)


def test_a_truncation_grows_only_as_far_as_omega_allows() -> None:
    nxt = next_try(Try(MSGS, 100), Outcome(FailureKind.TRUNCATED, CUT, 130, 400))
    assert nxt == Try(MSGS, 130)


def test_a_truncation_without_room_asks_for_a_shorter_answer() -> None:
    nxt = next_try(Try(MSGS, 100), Outcome(FailureKind.TRUNCATED, CUT, 60, 400))
    assert nxt is not None
    assert nxt.max_tokens == 100
    assert nxt.messages[-1]["content"] == SHORTER.format(limit=100)
    assert nxt.asked_shorter


def test_a_truncation_after_asking_shorter_escalates() -> None:
    last = Try(MSGS, 100, asked_shorter=True)
    assert next_try(last, Outcome(FailureKind.TRUNCATED, CUT, 60, 400)) is None


@pytest.mark.parametrize(
    "kind", [FailureKind.TRUNCATED, FailureKind.SCHEMA_VIOLATION, FailureKind.INVALID_JSON]
)
def test_an_output_repeating_an_earlier_failure_leaves_the_tier(kind: FailureKind) -> None:
    last = Try(MSGS, 100)
    assert next_try(last, Outcome(kind, CUT, None, 400)) is not None
    assert next_try(last, Outcome(kind, CUT, None, 400, repeat_of=1)) is None


@pytest.mark.parametrize("kind", [FailureKind.TIMEOUT, FailureKind.DEAD_END, FailureKind.CRASH])
def test_deterministic_failures_leave_the_tier(kind: FailureKind) -> None:
    assert next_try(Try(MSGS, 100), Outcome(kind, CUT, None, 400)) is None


def test_a_truncated_answer_is_retried_with_more_tokens(rt: Coordinator) -> None:
    local = ScriptedTier("local", [GOOD, GOOD])
    rt.router.set_tiers([local])
    res = rt.router.generate(Derivative, "d/dx x**2", workflow_id="wf", max_tokens=2)
    assert [r.max_tokens for r in local.requests] == [2, 4]
    assert local.requests[1].messages == local.requests[0].messages  # no feedback needed
    first, second = res.attempts
    assert (first.failure, first.max_tokens) == (FailureKind.TRUNCATED, 2)
    assert (second.ok, second.failure, second.max_tokens) == (True, None, 4)


def test_a_truncation_under_a_tight_ceiling_asks_for_less(rt: Coordinator) -> None:
    long = '{"expression": "' + "x + " * 30 + 'x", "derivative": "1"}'  # 63 scripted tokens
    local = ScriptedTier("local", [long, GOOD])
    rt.router.set_tiers([local])
    system = {"role": "system", "content": rt.router.system_prompt}
    prompt = local.count_prompt([system, {"role": "user", "content": "q"}])
    # after a first attempt of 40 tokens out, room for 33 more: not the 80 a doubling wants
    rt.budgets.set("tight", ceiling=(prompt + 3 * 40) + prompt + 100)
    res = rt.router.generate(Derivative, "q", workflow_id="tight", max_tokens=40)
    assert [r.max_tokens for r in local.requests] == [40, 40]
    assert local.requests[1].messages[-1]["content"] == SHORTER.format(limit=40)
    assert [a.failure for a in res.attempts] == [FailureKind.TRUNCATED, None]


def test_every_failed_attempt_records_its_class_and_repeats(rt: Coordinator) -> None:
    x, y = '{"expression": "x"}', '{"expression": "y"}'
    rt.router.set_tiers([ScriptedTier("local", [x, y, x])])
    with pytest.raises(EpistemicYieldError) as info:
        rt.router.generate(Derivative, "q", workflow_id="wf")
    attempts = info.value.attempts
    assert [a.failure for a in attempts] == [FailureKind.SCHEMA_VIOLATION] * 3
    assert [a.repeat_of for a in attempts] == [None, None, 1]


def test_an_identical_failed_answer_is_never_paid_for_again(rt: Coordinator) -> None:
    same = '{"expression": "x"}'  # a schema violation, the same tokens every time
    local = ScriptedTier("local", [same, same, GOOD])
    oracle = ScriptedTier("oracle", [GOOD])
    rt.router.set_tiers([local, oracle])
    res = rt.router.generate(Derivative, "q", workflow_id="wf")
    # the second answer repeated the first despite the error fed back and a fresh seed:
    # the local tier is left instead of paying for the same answer a third time
    assert len(local.requests) == 2 and res.tier == "oracle"
    assert [(a.tier, a.index, a.failure, a.repeat_of) for a in res.attempts] == [
        ("local", 1, FailureKind.SCHEMA_VIOLATION, None),
        ("local", 2, FailureKind.SCHEMA_VIOLATION, 1),
        ("oracle", 1, None, None),
    ]
    assert rt.budgets.spent("wf") == pytest.approx(sum(a.cost for a in res.attempts))
    assert res.cost == pytest.approx(rt.budgets.spent("wf"))


class _CappedTier(SteerableTier):
    """A tier whose server stops every answer after 3 tokens, whatever ``max_tokens`` says."""

    name = "local"

    def __init__(self) -> None:
        self.requests: list[TierRequest] = []

    def complete(self, request: TierRequest, meter: Meter) -> TierOutput:
        self.requests.append(request)
        meter.charge(tokens_in=3, tokens_out=3)
        text = '{"expression": "x'
        return TierOutput(text=text, tokens_in=3, tokens_out=3, model="m", finish_reason="length")


def test_a_truncation_repeated_at_a_larger_limit_leaves_the_tier(rt: Coordinator) -> None:
    local = _CappedTier()
    rt.router.set_tiers([local, ScriptedTier("oracle", [GOOD])])
    res = rt.router.generate(Derivative, "q", workflow_id="wf", max_tokens=4)
    assert [r.max_tokens for r in local.requests] == [4, 8]  # no third try at 16
    assert [(a.tier, a.failure, a.repeat_of) for a in res.attempts] == [
        ("local", FailureKind.TRUNCATED, None),
        ("local", FailureKind.TRUNCATED, 1),
        ("oracle", None, None),
    ]
    assert rt.budgets.spent("wf") == pytest.approx(sum(a.cost for a in res.attempts))


def test_a_failed_event_names_the_class(rt: Coordinator) -> None:
    from coreason_runtime import EventType

    events = []
    rt.bus.subscribe(events.append, EventType.ATTEMPT_FAILED)
    rt.router.set_tiers([ScriptedTier("local", ["nope", GOOD])])
    rt.router.generate(Derivative, "q", workflow_id="wf")
    assert [e.data.failure for e in events] == ["invalid_json"]


class _ClosingTier(SteerableTier):
    """A steerable tier that reports having closed its value early."""

    name = "local"

    def complete(self, request: TierRequest, meter: Meter) -> TierOutput:
        meter.charge(tokens_in=3, tokens_out=4)
        return TierOutput(text=GOOD, tokens_in=3, tokens_out=4, model="m", closed="budget")


def test_the_result_says_when_the_value_was_closed_early(rt: Coordinator) -> None:
    rt.router.set_tiers([_ClosingTier()])
    res = rt.router.generate(Derivative, "q", workflow_id="wf", max_tokens=8)
    assert res.closed == "budget"
    assert res.attempts[-1].closed == "budget"
    assert res.attempts[-1].max_tokens == 8

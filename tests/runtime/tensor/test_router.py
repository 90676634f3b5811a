"""The router's cascade, correction loop and budget enforcement, on scripted tiers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from coreason_runtime import (
    AuthenticationError,
    BudgetExceededError,
    Coordinator,
    EpistemicYieldError,
    EventType,
    GrammarDeadEndError,
    RequestError,
    SchemaCompileError,
    SchemaError,
    UnknownWorkflowError,
    ValidationFailure,
)
from coreason_runtime.tensor import (
    CompiledSchema,
    ScriptedSteerableTier,
    ScriptedTier,
    SteerableTier,
)
from pydantic import BaseModel


class Derivative(BaseModel):
    expression: str
    derivative: str


GOOD = '{"expression": "x**2", "derivative": "2*x"}'


@pytest.fixture
def rt(home) -> Iterator[Coordinator]:
    runtime = Coordinator()
    runtime.budgets.set("wf", ceiling=10_000)
    yield runtime
    runtime.close()


def test_local_answer_is_validated_into_the_model(rt: Coordinator) -> None:
    rt.router.set_tiers([ScriptedSteerableTier("local", [GOOD])])
    res = rt.router.generate(Derivative, "d/dx x**2", workflow_id="wf")
    assert res.value == Derivative(expression="x**2", derivative="2*x")
    assert res.tier == "local"
    assert res.cost == rt.budgets.spent("wf") > 0


def test_raw_json_schema_gives_a_dict(rt: Coordinator) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    rt.router.set_tiers([ScriptedTier("local", ['{"n": 4}'])])
    assert rt.router.generate(schema, "four", workflow_id="wf").value == {"n": 4}


def test_validation_error_text_is_fed_back_to_the_next_attempt(rt: Coordinator) -> None:
    local = ScriptedTier("local", ['{"expression": "x**2"}', GOOD])
    rt.router.set_tiers([local])
    res = rt.router.generate(Derivative, "d/dx x**2", workflow_id="wf")
    assert [a.ok for a in res.attempts] == [False, True]
    second = local.requests[1].messages
    assert second[-2] == {"role": "assistant", "content": '{"expression": "x**2"}'}
    assert "derivative" in second[-1]["content"] and "Field required" in second[-1]["content"]


def test_at_most_three_attempts_per_tier_then_escalation(rt: Coordinator) -> None:
    local = ScriptedTier("local", [f"nope{i}" for i in range(5)])  # five distinct answers
    oracle = ScriptedTier("oracle", [GOOD])
    rt.router.set_tiers([local, oracle])
    escalations = []
    rt.bus.subscribe(escalations.append, EventType.ESCALATED)
    res = rt.router.generate(Derivative, "d/dx x**2", workflow_id="wf")
    assert res.tier == "oracle"
    assert len(local.requests) == 3
    assert [a.tier for a in res.attempts] == ["local"] * 3 + ["oracle"]
    assert escalations[0].data.from_tier == "local"


def test_deterministic_failure_is_not_retried(rt: Coordinator) -> None:
    local = ScriptedTier("local", [GrammarDeadEndError("no legal token")] * 3)
    rt.router.set_tiers([local, ScriptedTier("oracle", [GOOD])])
    res = rt.router.generate(Derivative, "q", workflow_id="wf")
    assert len(local.requests) == 1
    assert res.attempts[0].error_type == "GrammarDeadEndError"


def test_authentication_failure_escalates_without_retry(rt: Coordinator) -> None:
    oracle = ScriptedTier("oracle", [AuthenticationError("401")] * 3)
    rt.router.set_tiers([ScriptedTier("local", ["x"] * 3), oracle])
    with pytest.raises(EpistemicYieldError):
        rt.router.generate(Derivative, "q", workflow_id="wf")
    assert len(oracle.requests) == 1


def test_every_tier_failing_yields_with_every_attempt(rt: Coordinator) -> None:
    local = ScriptedTier("local", ["a1", "a2", "a3"])
    rt.router.set_tiers([local, ScriptedTier("oracle", ["b1", "b2", "b3"])])
    with pytest.raises(EpistemicYieldError) as info:
        rt.router.generate(Derivative, "q", workflow_id="wf")
    err = info.value
    assert [(a.tier, a.index) for a in err.attempts] == [
        ("local", 1),
        ("local", 2),
        ("local", 3),
        ("oracle", 1),
        ("oracle", 2),
        ("oracle", 3),
    ]
    assert all(a.error_type == "ValidationFailure" for a in err.attempts)
    assert sum(a.cost for a in err.attempts) == rt.budgets.spent("wf")
    assert err.schema is not None and err.prompt == "q"


def test_human_answer_resolves_a_yield_as_tier_human(rt: Coordinator) -> None:
    rt.router.set_tiers([ScriptedTier("local", ["a"] * 3)])
    with pytest.raises(EpistemicYieldError) as info:
        rt.router.generate(Derivative, "q", workflow_id="wf")
    res = rt.router.resolve_yield(info.value, {"expression": "x", "derivative": "1"})
    assert res.tier == "human" and res.value.derivative == "1"
    assert "human" in rt.budgets.get("wf").by_tier


def test_invalid_human_answer_is_rejected(rt: Coordinator) -> None:
    rt.router.set_tiers([ScriptedTier("local", ["a"] * 3)])
    with pytest.raises(EpistemicYieldError) as info:
        rt.router.generate(Derivative, "q", workflow_id="wf")
    with pytest.raises(ValidationFailure):
        rt.router.resolve_yield(info.value, {"expression": "x"})


def test_tiers_argument_restricts_the_cascade(rt: Coordinator) -> None:
    local = ScriptedTier("local", [GOOD])
    rt.router.set_tiers([local, ScriptedTier("oracle", [GOOD])])
    res = rt.router.generate(Derivative, "q", workflow_id="wf", tiers=["oracle"])
    assert res.tier == "oracle" and local.requests == []


def test_unknown_tier_name_is_a_request_error(rt: Coordinator) -> None:
    rt.router.set_tiers([ScriptedTier("local", [GOOD])])
    with pytest.raises(RequestError, match="COREASON_ORACLE_BASE_URL"):
        rt.router.generate(Derivative, "q", workflow_id="wf", tiers=["oracle"])


def test_budget_cut_off_bypasses_every_retry_and_escalation(rt: Coordinator) -> None:
    rt.budgets.set("tight", ceiling=400)
    long_answer = " ".join(["tok"] * 200)
    local = ScriptedTier("local", [long_answer] * 3)
    oracle = ScriptedTier("oracle", [GOOD])
    rt.router.set_tiers([local, oracle])
    with pytest.raises(BudgetExceededError) as info:
        rt.router.generate(Derivative, "go", workflow_id="tight", max_tokens=500, system="be brief")
    assert len(local.requests) == 1 and oracle.requests == []
    ledger = rt.budgets.get("tight")
    assert 0 < ledger.tokens_out < 200  # cut off mid-way
    assert ledger.spent <= 400 and ledger.reserved == 0
    assert info.value.workflow_id == "tight"


@pytest.mark.parametrize("bad", [int, "a string", 42, {}, {"type": "no-such-type"}])
def test_not_a_schema_is_refused_before_any_spend(rt: Coordinator, bad: object) -> None:
    rt.router.set_tiers([ScriptedTier("local", [GOOD])])
    with pytest.raises(SchemaError):
        rt.router.generate(bad, "q", workflow_id="wf")
    assert rt.budgets.spent("wf") == 0


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_is_refused(rt: Coordinator, prompt: str) -> None:
    with pytest.raises(RequestError):
        rt.router.generate(Derivative, prompt, workflow_id="wf")


def test_unknown_workflow_is_refused_before_any_spend(rt: Coordinator) -> None:
    local = ScriptedTier("local", [GOOD])
    rt.router.set_tiers([local])
    with pytest.raises(UnknownWorkflowError):
        rt.router.generate(Derivative, "q", workflow_id="never-set")
    assert local.requests == []


def test_uncompilable_schema_skips_the_steerable_tier(rt: Coordinator) -> None:
    def compiler(spec, tier):
        compiled = CompiledSchema(spec=spec, openai={"type": "json_schema"})
        if isinstance(tier, SteerableTier):
            compiled.errors["grammar"] = SchemaCompileError("unsupported keyword")
        return compiled

    local = ScriptedSteerableTier("local", [GOOD])
    rt.router._compiler = compiler
    rt.router.set_tiers([local, ScriptedTier("oracle", [GOOD])])
    res = rt.router.generate(Derivative, "q", workflow_id="wf")
    assert res.tier == "oracle" and local.requests == []
    assert res.attempts[0].skipped and res.attempts[0].error_type == "SchemaCompileError"


def test_request_events_are_published_in_order(rt: Coordinator) -> None:
    rt.router.set_tiers([ScriptedTier("local", ["bad", GOOD])])
    seen: list[EventType] = []
    rt.bus.subscribe(lambda e: seen.append(e.type), ["request", "attempt"])
    rt.router.generate(Derivative, "q", workflow_id="wf")
    assert seen == [
        EventType.REQUEST_STARTED,
        EventType.ATTEMPT_STARTED,
        EventType.ATTEMPT_FAILED,
        EventType.ATTEMPT_STARTED,
        EventType.ATTEMPT_FINISHED,
        EventType.REQUEST_FINISHED,
    ]


def test_submit_returns_a_future_with_the_result(rt: Coordinator) -> None:
    rt.router.set_tiers([ScriptedTier("local", [GOOD])])
    fut = rt.router.submit(Derivative, "q", workflow_id="wf")
    assert fut.result(timeout=10).tier == "local"


def test_strict_mode_nulls_in_optional_fields_are_dropped_before_validation(
    rt: Coordinator,
) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
        "required": ["a"],
    }
    rt.router.set_tiers([ScriptedTier("oracle", ['{"a": "x", "b": null}'])])
    assert rt.router.generate(schema, "q", workflow_id="wf").value == {"a": "x"}


def test_format_keywords_are_enforced_by_validation(rt: Coordinator) -> None:
    schema = {
        "type": "object",
        "properties": {"day": {"type": "string", "format": "date"}},
        "required": ["day"],
    }
    rt.router.set_tiers([ScriptedTier("oracle", ['{"day": "yesterday"}'] * 3)])
    with pytest.raises(EpistemicYieldError) as info:
        rt.router.generate(schema, "q", workflow_id="wf")
    assert "date" in (info.value.attempts[0].error or "")


@pytest.fixture
def cached_rt(home) -> Iterator[Coordinator]:
    from coreason_runtime import RuntimeConfig

    runtime = Coordinator(RuntimeConfig(home=home, subgoal_cache=True))
    runtime.budgets.set("wf", ceiling=10_000)
    yield runtime
    runtime.close()


def test_router_without_the_cache_setting_asks_the_tier_every_time(home: Path) -> None:
    from coreason_runtime import RuntimeConfig

    rt = Coordinator(RuntimeConfig(home=home, subgoal_cache=False))
    rt.budgets.set("wf", ceiling=10_000)
    local = ScriptedTier("local", [GOOD, GOOD])
    rt.router.set_tiers([local])
    try:
        rt.router.generate(Derivative, "d/dx x**2", workflow_id="wf")
        assert rt.router.generate(Derivative, "d/dx x**2", workflow_id="wf").tier == "local"
    finally:
        rt.close()


def test_repeated_question_is_answered_by_the_verified_cache_at_no_cost(
    cached_rt: Coordinator,
) -> None:
    rt = cached_rt
    local = ScriptedTier("local", [GOOD])
    rt.router.set_tiers([local])
    first = rt.router.generate(Derivative, "d/dx x**2", workflow_id="wf")
    again = rt.router.generate(Derivative, "d/dx x**2", workflow_id="wf")
    assert (first.tier, again.tier) == ("local", "cache")
    assert again.value == first.value and again.cost == 0
    assert len(local.requests) == 1


def test_cache_can_be_bypassed_per_request(cached_rt: Coordinator) -> None:
    rt = cached_rt
    local = ScriptedTier("local", [GOOD, GOOD])
    rt.router.set_tiers([local])
    rt.router.generate(Derivative, "d/dx x**2", workflow_id="wf")
    assert (
        rt.router.generate(Derivative, "d/dx x**2", workflow_id="wf", cache=False).tier == "local"
    )


def test_retries_sample_with_rising_temperature_and_fresh_seeds(rt: Coordinator) -> None:
    local = ScriptedTier("local", ["bad", "worse", GOOD])
    rt.router.set_tiers([local])
    rt.router.generate(Derivative, "q", workflow_id="wf", seed=7)
    assert [r.temperature for r in local.requests] == [0.0, 0.4, 0.8]
    assert [r.seed for r in local.requests] == [7, 8, 9]


def test_pretty_output_is_asked_of_the_grammar(rt: Coordinator) -> None:
    local = ScriptedSteerableTier("local", [GOOD, GOOD])
    rt.router.set_tiers([local])
    rt.router.generate(Derivative, "q", workflow_id="wf", pretty=True)
    rt.router.generate(Derivative, "q", workflow_id="wf", cache=False)
    assert [r.schema.spec.pretty for r in local.requests] == [True, False]

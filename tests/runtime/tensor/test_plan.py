"""Cost before spend: a dry run plans the cascade by the cage's reservation rule, spends nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from coreason_runtime import (
    Coordinator,
    EventType,
    RequestError,
    SchemaCompileError,
    UnknownWorkflowError,
)
from coreason_runtime.cli import main
from coreason_runtime.events import BudgetReserved
from coreason_runtime.tensor import (
    CompiledSchema,
    SchemaSpec,
    ScriptedSteerableTier,
    ScriptedTier,
    TensorRouter,
    Tier,
)
from pydantic import BaseModel


class Answer(BaseModel):
    value: int


@pytest.fixture
def rt(home: object) -> Iterator[Coordinator]:
    runtime = Coordinator(subgoal_cache=False)
    runtime.budgets.set("wf", ceiling=2_000)
    runtime.router.set_tiers(
        [
            ScriptedSteerableTier("local", ['{"value": 1}'], repeat_last=True),
            ScriptedTier("oracle", ['{"value": 1}'], repeat_last=True),
        ]
    )
    yield runtime
    runtime.close()


def test_the_plan_names_each_tier_its_form_and_its_reservation(rt: Coordinator) -> None:
    plan = rt.router.dry_run(Answer, "What is one?", workflow_id="wf", max_tokens=100)
    assert [(t.tier, t.form) for t in plan.tiers] == [
        ("local", "grammar"),
        ("oracle", "openai strict"),
    ]
    local = plan.tiers[0]
    assert local.reserve == rt.budgets.cost(local.prompt_tokens, 100)
    assert local.attempts == rt.router.max_attempts_per_tier
    assert plan.left == 2_000 and plan.fits


def test_the_first_grant_is_what_a_real_request_reserves(rt: Coordinator) -> None:
    plan = rt.router.dry_run(Answer, "What is one?", workflow_id="wf", max_tokens=100)
    reserved: list[float] = []
    sub = rt.bus.subscribe(
        lambda e: reserved.append(e.data.granted) if isinstance(e.data, BudgetReserved) else None,
        EventType.BUDGET_RESERVED,
    )
    rt.router.generate(Answer, "What is one?", workflow_id="wf", max_tokens=100)
    sub.unsubscribe()
    assert reserved[0] == plan.first_grant


def test_a_dry_run_spends_and_reserves_nothing(rt: Coordinator) -> None:
    before = rt.budgets.get("wf")
    rt.router.dry_run(Answer, "What is one?", workflow_id="wf")
    assert rt.budgets.get("wf") == before
    assert not rt.bus.history([EventType.BUDGET_RESERVED, EventType.ATTEMPT_STARTED])


def test_the_worst_case_never_passes_what_is_left(rt: Coordinator) -> None:
    plan = rt.router.dry_run(Answer, "What is one?", workflow_id="wf", max_tokens=500)
    full = sum(t.reserve * t.attempts for t in plan.tiers)
    assert full > 2_000
    assert plan.worst_case == 2_000


def test_a_ceiling_too_small_for_the_prompt_is_reported_refused(rt: Coordinator) -> None:
    rt.budgets.set("tiny", ceiling=3)
    plan = rt.router.dry_run(Answer, "What is one?", workflow_id="tiny")
    assert not plan.fits and plan.first_grant is None
    assert "refused" in str(plan)


def test_a_grant_is_clipped_to_what_is_left(rt: Coordinator) -> None:
    rt.budgets.set("small", ceiling=60)
    plan = rt.router.dry_run(Answer, "What is one?", workflow_id="small", max_tokens=100)
    assert plan.fits and plan.first_grant == 60


def test_a_tier_without_a_form_is_shown_skipped(rt: Coordinator) -> None:
    def compiler(spec: SchemaSpec, tier: Tier | None) -> CompiledSchema:
        if tier is not None and tier.name == "local":
            msg = "no grammar for this schema"
            raise SchemaCompileError(msg)
        assert tier is not None
        return tier.compile(spec)

    router = TensorRouter(rt.router.tiers, rt.budgets, rt.bus, compiler=compiler)
    plan = router.dry_run(Answer, "n?", workflow_id="wf", max_tokens=50)
    assert plan.tiers[0].skipped and "no grammar" in plan.tiers[0].form
    assert plan.first is plan.tiers[1]
    assert plan.worst_case == plan.tiers[1].reserve * plan.tiers[1].attempts


def test_the_same_arguments_are_refused_as_generate_refuses_them(rt: Coordinator) -> None:
    with pytest.raises(UnknownWorkflowError):
        rt.router.dry_run(Answer, "q", workflow_id="nope")
    with pytest.raises(RequestError):
        rt.router.dry_run(Answer, " ", workflow_id="wf")
    with pytest.raises(RequestError):
        rt.router.dry_run(Answer, "q", workflow_id="wf", max_tokens=0)
    with pytest.raises(RequestError):
        rt.router.dry_run(Answer, "q", workflow_id="wf", tiers=["nope"])


def test_the_command_line_prints_the_plan(
    home: object, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # an oracle nobody listens on: a dry run never calls it
    monkeypatch.setenv("COREASON_ORACLE_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("COREASON_ORACLE_MODEL", "m")
    schema = '{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}'
    args = ["ask", "n?", "--schema", schema, "-w", "cli", "--ceiling", "500", "--tiers", "oracle"]
    assert main([*args, "--dry-run", "--max-tokens", "50"]) == 0
    out = capsys.readouterr().out
    assert "dry run: workflow 'cli' · Ω 500 · C 0 spent" in out
    assert "oracle (m): openai strict" in out
    assert "first attempt leases C" in out

"""The router's routing hook: plans on the result and the bus, capability, the gate, memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from coreason_runtime import (
    Coordinator,
    EpistemicYieldError,
    EscalationRefusedError,
    EventType,
)
from coreason_runtime.events import RouteDecided, TierHealthChanged, WhatIfDecided
from coreason_runtime.route import (
    Capability,
    EscalationGate,
    Featurizer,
    FunctionTier,
    Routing,
    make_policy,
)
from coreason_runtime.tensor import SchemaSpec, ScriptedTier
from pydantic import BaseModel


class Answer(BaseModel):
    value: str


GOOD = '{"value": "ok"}'
DEEP = {
    "type": "object",
    "properties": {
        "a": {
            "type": "object",
            "properties": {
                "b": {
                    "type": "object",
                    "properties": {
                        "c": {"type": "object", "properties": {"d": {"type": "string"}}}
                    },
                }
            },
        }
    },
}


@pytest.fixture
def rt(home: Path) -> Iterator[Coordinator]:
    runtime = Coordinator()
    runtime.budgets.set("wf", ceiling=None)
    yield runtime
    runtime.close()


def _scripted(local: list[str], oracle: list[str]) -> list[ScriptedTier]:
    return [
        ScriptedTier("local", local, repeat_last=True),
        ScriptedTier("oracle", oracle, repeat_last=True),
    ]


def test_the_plan_and_its_reason_are_on_the_result_and_the_bus(rt: Coordinator) -> None:
    rt.router.set_tiers(_scripted([GOOD], [GOOD]))
    decided = []
    rt.bus.subscribe(decided.append, EventType.ROUTE_DECIDED)
    res = rt.router.generate(Answer, "differentiate x**2", workflow_id="wf")
    assert res.route is not None and res.route.policy == "learned"
    assert res.route.tiers == ["local", "oracle"]  # nothing learned yet: the cascade's order
    assert res.route.family == "calculus"
    assert res.metadata()["route"] == res.route.reason
    (event,) = decided
    assert isinstance(event.data, RouteDecided) and event.workflow_id == "wf"
    assert event.data.tiers == ["local", "oracle"] and event.data.reason == res.route.reason
    assert set(event.data.estimates) == {"local", "oracle"}


def test_a_tier_beyond_its_capability_is_skipped_with_the_reason(rt: Coordinator) -> None:
    rt.tiers.add(ScriptedTier("small", [GOOD]), capability=Capability(k_model=0.1), position=0)
    rt.router.set_tiers([rt.router.tier("small"), ScriptedTier("oracle", [GOOD])])
    res = rt.router.generate(DEEP, "fill it in", workflow_id="wf")
    assert res.tier == "oracle"
    assert res.route is not None and res.route.skipped["small"].startswith("capability: K_model")
    assert [a.tier for a in res.attempts] == ["oracle"]


def test_a_tool_that_does_not_answer_the_schema_is_not_asked(rt: Coordinator) -> None:
    asked = []

    def tool(spec: SchemaSpec, prompt: str) -> dict[str, str]:
        asked.append(prompt)
        return {"value": "tool"}

    only_other = FunctionTier("tool", tool, accepts=lambda s: s.name == "Other")
    rt.router.set_tiers([only_other, ScriptedTier("oracle", [GOOD])])
    res = rt.router.generate(Answer, "hello", workflow_id="wf")
    assert res.tier == "oracle" and asked == []
    assert res.route is not None and "does not answer" in res.route.skipped["tool"]


def _trained_routing(rt: Coordinator) -> Routing:
    """A routing that learned: local fails on linear algebra, the oracle rarely rescues it."""
    f = Featurizer()
    policy = make_policy(
        "linucb", ["local", "oracle"], f.dims, lam=1e-4, costs={"local": 200.0, "oracle": 6000.0}
    )
    gate = EscalationGate(lam=1e-4, bus=rt.bus)
    spec = SchemaSpec.from_user(Answer)
    for i in range(40):
        ctx = f.context(spec, f"eigenvalues of matrix {i}")
        policy.observe(ctx, "local", False, 200.0)
        policy.observe(ctx, "oracle", i % 10 == 0, 6000.0)
        gate.escalations.observe(ctx.family, "oracle", i % 10 == 0)
    return Routing(policy, featurizer=f, gate=gate, bus=rt.bus)


def test_a_refused_escalation_goes_to_the_human_with_the_reason(rt: Coordinator) -> None:
    rt.router.set_tiers(_scripted(["nope"], [GOOD]))
    rt.router.routing = _trained_routing(rt)
    refused = []
    rt.bus.subscribe(refused.append, EventType.WHATIF_REFUSED)
    with pytest.raises(EscalationRefusedError) as info:
        rt.router.generate(Answer, "eigenvalues of matrix A", workflow_id="wf")
    err = info.value
    assert err.refused_tier == "oracle" and "gain/cost" in (err.reason or "")
    assert "refused by the what-if gate" in str(err)
    assert {a.tier for a in err.attempts} == {"local"}  # the oracle was never paid
    (event,) = refused
    assert isinstance(event.data, WhatIfDecided) and event.workflow_id == "wf"
    assert event.source == "route.gate" and event.data.name == "escalate local->oracle"
    # the human answers it like any yield (the Oracle Circuit)
    res = rt.router.resolve_yield(err, {"value": "from a person"})
    assert res.tier == "human" and isinstance(err, EpistemicYieldError)


def test_an_allowed_escalation_runs_and_is_learned_from(rt: Coordinator) -> None:
    rt.router.set_tiers(_scripted(["nope"], [GOOD]))
    allowed = []
    rt.bus.subscribe(allowed.append, EventType.WHATIF_ALLOWED)
    res = rt.router.generate(Answer, "differentiate x", workflow_id="wf")
    assert res.tier == "oracle" and len(allowed) == 1
    routing = rt.router.routing
    assert routing is not None
    stats = routing.stats()
    assert (stats["local"].requests, stats["local"].successes) == (1, 0)
    assert (stats["oracle"].requests, stats["oracle"].successes) == (1, 1)
    assert stats["local"].cost == sum(a.cost for a in res.attempts if a.tier == "local")


def test_what_was_learned_survives_a_restart(home: Path) -> None:
    with Coordinator() as rt:
        rt.budgets.set("wf", ceiling=None)
        rt.router.set_tiers(_scripted(["nope"], [GOOD]))
        for i in range(6):
            rt.router.generate(Answer, f"solve equation {i}", workflow_id="wf")
        assert rt.router.routing is not None
        stats = rt.router.routing.stats()
    assert stats["oracle"].requests == 6 and 1 <= stats["local"].requests < 6
    with Coordinator() as again:
        again.router.set_tiers(_scripted([GOOD], [GOOD]))
        routing = again.router.routing
        assert routing is not None
        ctx = routing.featurizer.context(SchemaSpec.from_user(Answer), "solve equation 9")
        plan = routing.policy.plan(ctx, ["local", "oracle"])
    assert plan.estimates["local"].n == stats["local"].requests
    assert plan.estimates["oracle"].n == 6
    assert plan.tiers[0] == "oracle"  # local failed every time it was tried


def test_a_cheap_tier_that_stops_answering_is_abandoned_and_announced(rt: Coordinator) -> None:
    rt.tiers.add(ScriptedTier("local", [GOOD] * 30 + ["nope"] * 60))
    rt.tiers.add(ScriptedTier("oracle", [GOOD], repeat_last=True), weight_in=10, weight_out=30)
    health = []
    rt.bus.subscribe(health.append, EventType.TIER_HEALTH)
    first: list[str] = []
    for i in range(45):
        res = rt.router.generate(Answer, f"differentiate x**{i}", workflow_id="wf")
        assert res.route is not None
        first.append(res.route.tiers[0])
    assert first[:31] == ["local"] * 31
    after = first[30:]
    assert "oracle" in after[:8]  # abandoned within a bounded number of requests
    assert after.count("local") <= 8  # it is only probed now and then
    (event, *_) = health
    assert isinstance(event.data, TierHealthChanged)
    assert (event.data.tier, event.data.state, event.data.previous) == ("local", "degraded", "ok")
    assert rt.router.routing is not None and rt.router.routing.health("local") == "degraded"


def test_the_static_policy_walks_every_tier_without_a_gate(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COREASON_ROUTE_POLICY", "static")
    with Coordinator() as rt:
        rt.budgets.set("wf", ceiling=None)
        rt.router.set_tiers(_scripted(["nope"], [GOOD]))
        res = rt.router.generate(Answer, "x", workflow_id="wf")
        assert res.route is not None and res.route.policy == "static"
        assert res.route.tiers == ["local", "oracle"]
        assert rt.router.routing is not None and rt.router.routing.gate is None


def test_a_refused_tier_is_passed_over_for_the_next_one_the_gate_allows(rt: Coordinator) -> None:
    f = Featurizer()
    arms = ["local", "mid", "oracle"]
    costs = {"local": 200.0, "mid": 3000.0, "oracle": 6000.0}
    policy = make_policy("linucb", arms, f.dims, lam=1e-4, costs=costs)
    gate = EscalationGate(lam=1e-4, bus=rt.bus)
    spec = SchemaSpec.from_user(Answer)
    for i in range(30):
        ctx = f.context(spec, f"eigenvalues of matrix {i}")
        easy = i % 3 != 0
        # mid answers the easy questions only: 2/3 overall, but never one local failed
        policy.observe(ctx, "local", easy, 200.0)
        policy.observe(ctx, "mid", easy, 3000.0)
        policy.observe(ctx, "oracle", True, 6000.0)
        if not easy:
            gate.escalations.observe(ctx.family, "mid", False)
            gate.escalations.observe(ctx.family, "oracle", True)
    rt.router.routing = Routing(policy, featurizer=f, gate=gate, bus=rt.bus)
    rt.router.set_tiers(
        [
            ScriptedTier("local", ["nope"], repeat_last=True),
            ScriptedTier("mid", [GOOD], repeat_last=True),
            ScriptedTier("oracle", [GOOD], repeat_last=True),
        ]
    )
    res = rt.router.generate(Answer, "eigenvalues of matrix B", workflow_id="wf")
    assert res.route is not None and res.route.tiers == ["local", "mid", "oracle"]
    assert res.tier == "oracle"
    assert "mid" not in {a.tier for a in res.attempts}
    refused = [e.data for e in rt.bus.history([EventType.WHATIF_REFUSED])]
    decisions = [d for d in refused if isinstance(d, WhatIfDecided)]
    assert [d.name for d in decisions] == ["escalate local->mid"]
    assert res.route.refused == {"mid": decisions[0].reason}  # the result says so too


@pytest.mark.model
def test_embed_dims_embeds_prompts_with_the_local_model(
    home: Path, monkeypatch: pytest.MonkeyPatch, real_model: object
) -> None:
    monkeypatch.setenv("COREASON_ROUTE_EMBED_DIMS", "6")
    with Coordinator() as rt:
        rt.budgets.set("wf", ceiling=None)
        rt.router.set_tiers(_scripted([GOOD], [GOOD]))
        routing = rt.router.routing
        assert routing is not None and routing.featurizer.dims == Featurizer().dims + 6
        res = rt.router.generate(Answer, "differentiate x**2", workflow_id="wf")
        assert res.route is not None and res.tier == "local"


def test_answers_a_verifier_rejects_are_failures_the_policy_learns_from(
    rt: Coordinator,
) -> None:
    # local answers every time, but wrongly; only the oracle's answer passes the verifier
    rt.router.set_tiers(_scripted(['{"value": "wrong"}'], [GOOD]))
    rt.router.set_tool_tiers([])

    def right(value: Answer) -> bool:
        return value.value == "ok"

    plans = []
    for i in range(8):
        res = rt.router.generate(Answer, f"differentiate x**{i}", workflow_id="wf", verify=right)
        assert res.verified is True and res.tier == "oracle"
        assert res.route is not None
        plans.append(res.route.tiers[0])
    routing = rt.router.routing
    assert routing is not None
    stats = routing.stats()
    assert stats["local"].successes == 0 and stats["oracle"].successes == 8
    assert plans[0] == "local" and plans[-1] == "oracle"  # learned from verification
    # without a verifier the same wrong answer is a validated success
    res = rt.router.generate(Answer, "differentiate x**9", workflow_id="wf", tiers=["local"])
    assert res.verified is False and res.value.value == "wrong"
    assert routing.stats()["local"].successes == 1


@pytest.mark.parametrize(("oracle_cost", "refused"), [(25_000.0, True), (5_000.0, False)])
def test_a_plan_that_jumps_to_a_dear_tier_is_judged_by_the_gate(
    rt: Coordinator, oracle_cost: float, refused: bool
) -> None:
    # local never answers and is dear; the oracle always answers: the plan goes straight to the
    # oracle, passing over the cascade's entry tier, and the gate judges that jump (p = 1
    # against λC = 2.5 is refused; against λC = 0.5 it pays)
    f = Featurizer()
    costs = {"local": 20_000.0, "oracle": oracle_cost}
    policy = make_policy("linucb", ["local", "oracle"], f.dims, lam=1e-4, costs=costs)
    spec = SchemaSpec.from_user(Answer)
    for i in range(30):
        ctx = f.context(spec, f"eigenvalues of matrix {i}")
        policy.observe(ctx, "local", False, costs["local"])
        policy.observe(ctx, "oracle", True, oracle_cost)
    rt.router.routing = Routing(policy, featurizer=f, gate=EscalationGate(lam=1e-4, bus=rt.bus))
    rt.router.set_tiers(_scripted(["nope"], [GOOD]))
    if refused:
        with pytest.raises(EscalationRefusedError) as info:
            rt.router.generate(Answer, "eigenvalues of matrix B", workflow_id="wf")
        assert info.value.refused_tier == "oracle" and info.value.attempts == []
        assert rt.budgets.get("wf").spent == 0  # neither tier was paid
        res = rt.router.resolve_yield(info.value, {"value": "from a person"})
        assert res.tier == "human"
    else:
        res = rt.router.generate(Answer, "eigenvalues of matrix B", workflow_id="wf")
        assert res.tier == "oracle" and {a.tier for a in res.attempts} == {"oracle"}
        assert res.route is not None and res.route.tiers == ["oracle"]
    kind = EventType.WHATIF_REFUSED if refused else EventType.WHATIF_ALLOWED
    names = [e.data.name for e in rt.bus.history([kind]) if isinstance(e.data, WhatIfDecided)]
    assert names == ["escalate local->oracle"]

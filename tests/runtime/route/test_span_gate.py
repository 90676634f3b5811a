"""The what-if gate on span escalation: a field asked of a span tier only when it pays."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from coreason_runtime import Coordinator, EpistemicYieldError, EscalationRefusedError, EventType
from coreason_runtime.events import Event, WhatIfDecided
from coreason_runtime.tensor import Meter, ScriptedTier
from coreason_runtime.verify import Failure, VerifyPolicy
from coreason_runtime.verify._driver import FieldAnswer, FieldAsk
from coreason_runtime.verify._tools import FieldTier
from pydantic import BaseModel


class Answer(BaseModel):
    value: str


WRONG = '{"value": "wrong"}'
GOOD = '{"value": "ok"}'


class Expert(FieldTier):
    """A span tier answering every field with ``answer`` (JSON), 100 tokens in and 10 out."""

    name = "expert"

    def __init__(self, answer: str = '"ok"') -> None:
        self.answer = answer
        self.asked = 0

    def estimate(self, ask: FieldAsk) -> tuple[int, int]:
        return 100, 10

    def answer_field(self, ask: FieldAsk, meter: Meter) -> FieldAnswer | None:
        self.asked += 1
        meter.charge(100, 10)
        return FieldAnswer(self.answer, self.name)


def ok(value: Answer) -> list[Failure]:
    return [] if value.value == "ok" else [Failure("/value", "not ok")]


VERIFY = VerifyPolicy.of(ok, span_tiers=["expert"])


def wrong_each_time() -> ScriptedTier:
    """A local tier whose every attempt is wrong differently (an identical failed answer would
    leave the tier after its second attempt)."""
    return ScriptedTier("local", [lambda r: f'{{"value": "wrong {r.attempt}"}}'], repeat_last=True)


@pytest.fixture
def rt(home: Path) -> Iterator[Coordinator]:
    runtime = Coordinator()
    runtime.budgets.set("wf", ceiling=None)
    yield runtime
    runtime.close()


def _decisions(rt: Coordinator) -> list[WhatIfDecided]:
    seen: list[WhatIfDecided] = []

    def keep(event: Event) -> None:
        if isinstance(event.data, WhatIfDecided) and event.data.name.startswith("span"):
            seen.append(event.data)

    rt.bus.subscribe(keep, EventType.WHATIF_ALLOWED)
    rt.bus.subscribe(keep, EventType.WHATIF_REFUSED)
    return seen


def test_a_span_escalation_that_pays_is_allowed_and_repairs_the_field(rt: Coordinator) -> None:
    expert = Expert()
    rt.router.set_tiers([ScriptedTier("local", [WRONG], repeat_last=True)])
    rt.router.set_tool_tiers([expert])
    decisions = _decisions(rt)
    res = rt.router.generate(Answer, "say ok", workflow_id="wf", verify=VERIFY)
    assert res.verified is True and res.value.value == "ok" and expert.asked == 1
    assert [(r.tier, r.accepted) for r in res.repairs] == [("expert", True)]
    assert res.route is not None and res.route.refused == {}
    assert [(d.name, d.allowed) for d in decisions] == [("span /value -> expert", True)]


def test_a_span_escalation_that_does_not_pay_is_refused_and_the_human_told_why(
    rt: Coordinator,
) -> None:
    expert = Expert()
    rt.router.set_tiers([ScriptedTier("local", [WRONG], repeat_last=True)])
    rt.router.set_tool_tiers([expert])
    rt.budgets.set_tier_weights("expert", 100, 1000)  # C = 20,000: λ·C = 2 > any gain
    decisions = _decisions(rt)
    with pytest.raises(EscalationRefusedError) as caught:
        rt.router.generate(Answer, "say ok", workflow_id="wf", verify=VERIFY)
    assert expert.asked == 0  # never asked, never charged
    assert caught.value.refused_tier == "expert"
    assert "field /value" in str(caught.value) and caught.value.reason
    assert decisions and not any(d.allowed for d in decisions)
    assert decisions[0].predicted_cost == pytest.approx(1e-4 * (100 * 100 + 1000 * 10))


def test_a_refused_span_escalation_is_on_the_result_another_tier_answered(
    rt: Coordinator,
) -> None:
    rt.router.set_tiers(
        [
            ScriptedTier("local", [WRONG], repeat_last=True),
            ScriptedTier("oracle", [GOOD], repeat_last=True),
        ]
    )
    rt.router.set_tool_tiers([Expert()])
    rt.budgets.set_tier_weights("expert", 100, 1000)
    res = rt.router.generate(Answer, "say ok", workflow_id="wf", verify=VERIFY)
    assert res.tier == "oracle" and res.verified is True
    assert res.route is not None and list(res.route.refused) == ["expert (field /value)"]


def test_a_span_tier_whose_answers_fail_is_no_longer_asked(rt: Coordinator) -> None:
    expert = Expert('"still wrong"')
    rt.router.set_tiers([wrong_each_time()])
    rt.router.set_tool_tiers([expert])
    rt.budgets.set_tier_weights("expert", 10, 400)  # C = 5,000: pays while p̂ > 0.5
    with pytest.raises(EpistemicYieldError) as first:
        rt.router.generate(Answer, "say ok", workflow_id="wf", verify=VERIFY)
    assert not isinstance(first.value, EscalationRefusedError)
    asked = expert.asked
    assert asked >= 1  # nothing known: it was tried, and every answer it gave was rejected
    with pytest.raises(EscalationRefusedError, match="field /value"):
        rt.router.generate(Answer, "say ok again", workflow_id="wf", verify=VERIFY)
    assert expert.asked == asked  # learned from the first request: not asked again


def test_what_the_span_gate_learned_survives_a_restart(home: Path) -> None:
    def runtime() -> tuple[Coordinator, Expert]:
        rt = Coordinator()
        rt.budgets.set("wf", ceiling=None)
        expert = Expert('"still wrong"')
        rt.router.set_tiers([wrong_each_time()])
        rt.router.set_tool_tiers([expert])
        rt.budgets.set_tier_weights("expert", 10, 400)
        return rt, expert

    rt, expert = runtime()
    with rt, pytest.raises(EpistemicYieldError):
        rt.router.generate(Answer, "say ok", workflow_id="wf", verify=VERIFY)
    assert expert.asked >= 1
    again, fresh = runtime()
    with again, pytest.raises(EscalationRefusedError, match="field /value"):
        again.router.generate(Answer, "say ok", workflow_id="wf", verify=VERIFY)
    assert fresh.asked == 0

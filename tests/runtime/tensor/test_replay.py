"""Exact replay: a notebook's recorded requests are answered again at no cost, never changed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from coreason_runtime import BudgetExceededError, Coordinator, EpistemicYieldError, EventType
from coreason_runtime.tensor import ReplayRecord, ScriptedTier
from pydantic import BaseModel


class Answer(BaseModel):
    value: int


@pytest.fixture
def rt(home: object) -> Iterator[Coordinator]:
    runtime = Coordinator(subgoal_cache=False)
    runtime.budgets.set("wf", ceiling=10_000)
    yield runtime
    runtime.close()


@pytest.fixture
def record(rt: Coordinator) -> ReplayRecord:
    return rt.engine("replay", ReplayRecord.for_runtime).use("notebooks/tour.ipynb")


def counting_tier(outputs: list[str]) -> ScriptedTier:
    return ScriptedTier("local", outputs, repeat_last=True)


def test_the_router_of_a_runtime_consults_its_record(rt: Coordinator) -> None:
    assert rt.router.replay is rt.engine("replay", ReplayRecord.for_runtime)
    assert not rt.router.replay.enabled  # off until a notebook turns it on


def test_a_repeated_request_is_answered_from_the_record_at_no_cost(
    rt: Coordinator, record: ReplayRecord
) -> None:
    tier = counting_tier(['{"value": 1}', '{"value": 2}'])
    rt.router.set_tiers([tier])
    first = rt.router.generate(Answer, "one?", workflow_id="wf", seed=7)
    spent = rt.budgets.spent("wf")
    again = rt.router.generate(Answer, "one?", workflow_id="wf", seed=7)
    assert again.value == first.value == Answer(value=1)  # the tier would now say 2
    assert again.replayed and not first.replayed
    assert again.cost == 0 and rt.budgets.spent("wf") == spent
    assert again.tier == first.tier and again.attempts == first.attempts
    assert len(tier.requests) == 1
    assert record.hits == 1


@pytest.mark.parametrize(
    "change",
    [{"seed": 8}, {"max_tokens": 50}, {"temperature": 0.5}, {"prompt": "two?"}],
    ids=["seed", "max_tokens", "temperature", "prompt"],
)
def test_any_change_to_the_request_is_a_new_request(
    rt: Coordinator, record: ReplayRecord, change: dict[str, object]
) -> None:
    tier = counting_tier(['{"value": 1}'])
    rt.router.set_tiers([tier])
    base: dict[str, object] = {"workflow_id": "wf", "seed": 7, "max_tokens": 40}
    rt.router.generate(Answer, "one?", **base)  # type: ignore[arg-type]
    prompt = str(change.pop("prompt", "one?"))
    res = rt.router.generate(Answer, prompt, **{**base, **change})  # type: ignore[arg-type]
    assert not res.replayed and len(tier.requests) == 2


def test_a_yield_is_replayed_without_paying_for_the_failed_attempts(
    rt: Coordinator, record: ReplayRecord
) -> None:
    tier = counting_tier(['{"value": "not a number"}'])
    rt.router.set_tiers([tier])
    with pytest.raises(EpistemicYieldError) as first:
        rt.router.generate(Answer, "one?", workflow_id="wf")
    spent = rt.budgets.spent("wf")
    calls = len(tier.requests)
    with pytest.raises(EpistemicYieldError, match="replayed") as again:
        rt.router.generate(Answer, "one?", workflow_id="wf")
    assert rt.budgets.spent("wf") == spent and len(tier.requests) == calls
    assert again.value.attempts == first.value.attempts
    answered = rt.router.resolve_yield(again.value, {"value": 3})  # the form still works
    assert answered.value == Answer(value=3)


def test_a_budget_refusal_is_never_recorded(rt: Coordinator, record: ReplayRecord) -> None:
    rt.router.set_tiers([counting_tier(['{"value": 1}'])])
    rt.budgets.set("tight", ceiling=5)
    with pytest.raises(BudgetExceededError):
        rt.router.generate(Answer, "one?", workflow_id="tight")
    assert len(record) == 0


def test_off_asks_the_tiers_and_records_nothing(rt: Coordinator, record: ReplayRecord) -> None:
    tier = counting_tier(['{"value": 1}'])
    rt.router.set_tiers([tier])
    record.enabled = False
    rt.router.generate(Answer, "one?", workflow_id="wf")
    rt.router.generate(Answer, "one?", workflow_id="wf")
    assert len(tier.requests) == 2 and len(record) == 0


def test_clear_forgets_the_notebooks_answers(rt: Coordinator, record: ReplayRecord) -> None:
    tier = counting_tier(['{"value": 1}'])
    rt.router.set_tiers([tier])
    rt.router.generate(Answer, "one?", workflow_id="wf")
    assert record.clear() == 1
    rt.router.generate(Answer, "one?", workflow_id="wf")
    assert len(tier.requests) == 2


def test_each_notebook_has_its_own_record(rt: Coordinator, record: ReplayRecord) -> None:
    tier = counting_tier(['{"value": 1}'])
    rt.router.set_tiers([tier])
    rt.router.generate(Answer, "one?", workflow_id="wf")
    record.use("notebooks/other.ipynb")
    rt.router.generate(Answer, "one?", workflow_id="wf")
    assert len(tier.requests) == 2
    assert record.path.name.startswith("other-")


def test_the_record_survives_a_new_runtime(home: object) -> None:
    for expected_calls in (1, 0):
        with Coordinator(subgoal_cache=False) as rt:
            rt.budgets.set("wf", ceiling=None)
            rt.engine("replay", ReplayRecord.for_runtime).use("nb.ipynb")
            tier = counting_tier(['{"value": 1}'])
            rt.router.set_tiers([tier])
            assert rt.router.generate(Answer, "one?", workflow_id="wf").value.value == 1
            assert len(tier.requests) == expected_calls


def test_a_replayed_request_is_announced(rt: Coordinator, record: ReplayRecord) -> None:
    rt.router.set_tiers([counting_tier(['{"value": 1}'])])
    rt.router.generate(Answer, "one?", workflow_id="wf")
    rt.router.generate(Answer, "one?", workflow_id="wf")
    finished = [e for e in rt.bus.history([EventType.REQUEST_FINISHED]) if e.source == "replay"]
    assert len(finished) == 1 and finished[0].data.cost == 0  # type: ignore[attr-defined]


def test_the_same_verifiers_key_alike_and_different_ones_do_not() -> None:
    from coreason_runtime.tensor._replay import _policy_key
    from coreason_runtime.verify import VerifyPolicy
    from coreason_runtime.verify._spec import parse_verify

    def key(text: str) -> object:
        return _policy_key(VerifyPolicy.of(parse_verify(text)))

    same = "derivative(of=sin(x)**2, result=derivative)"
    assert key(same) == key(same)  # parsed twice: new objects, one key
    assert "0x" not in repr(key(same))  # nothing keyed by a memory address
    assert key(same) != key("derivative(of=cos(x), result=derivative)")

"""Streaming a structured answer: partial values as tokens arrive, then the validated value."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest
from coreason_runtime import Coordinator, EpistemicYieldError, EventType
from coreason_runtime.tensor import PartialValues, ScriptedTier, parse_partial
from pydantic import BaseModel


class Derivative(BaseModel):
    expression: str
    derivative: str


GOOD = '{"expression": "x**2 + 3*x", "derivative": "2*x + 3"}'


@pytest.fixture
def rt(home: object) -> Iterator[Coordinator]:
    runtime = Coordinator()
    runtime.budgets.set("wf", ceiling=10_000)
    yield runtime
    runtime.close()


def test_a_json_prefix_parses_to_what_it_holds_so_far() -> None:
    assert parse_partial('{"expression": "x**2", "deriv') == {"expression": "x**2"}
    assert parse_partial('{"expression": "x**') == {"expression": "x**"}
    assert parse_partial("") is None
    assert parse_partial("not json") is None


def test_stream_yields_growing_values_then_the_validated_one(rt: Coordinator) -> None:
    rt.router.set_tiers([ScriptedTier("local", [GOOD], bus=rt.bus)])
    items = list(rt.router.stream(Derivative, "d/dx", workflow_id="wf"))
    *partials, final = items
    assert final.final
    assert final.value == Derivative(expression="x**2 + 3*x", derivative="2*x + 3")
    assert final.result is not None and final.result.cost == rt.budgets.spent("wf")
    assert len(partials) >= 3
    assert partials[0].value == {"expression": "x**2"}  # the first parseable prefix
    assert all(isinstance(p.value, dict) and not p.final for p in partials)
    assert [p.tokens_out for p in partials] == sorted(p.tokens_out for p in partials)
    assert partials[-1].value == {"expression": "x**2 + 3*x", "derivative": "2*x + 3"}


def test_a_retry_starts_the_text_over(rt: Coordinator) -> None:
    bad = '{"expression": "x**2"}'  # misses a required field: retried with the error fed back
    rt.router.set_tiers([ScriptedTier("local", [bad, GOOD], bus=rt.bus)])
    stream = rt.router.stream(Derivative, "d/dx", workflow_id="wf")
    items = list(stream)
    assert {p.attempt for p in items if not p.final} == {1, 2}
    second = [p for p in items if p.attempt == 2 and not p.final]
    assert second[0].value == {"expression": "x**2"}  # not glued to the first attempt's text
    assert stream.result is not None and len(stream.result.attempts) == 2


def test_the_error_of_the_request_is_raised_by_the_iteration(rt: Coordinator) -> None:
    rt.router.set_tiers([ScriptedTier("local", ['{"expression": 1}'], repeat_last=True)])
    rt.router.max_attempts_per_tier = 1
    with pytest.raises(EpistemicYieldError, match="every tier failed"):
        list(rt.router.stream(Derivative, "d/dx", workflow_id="wf", tiers=["local"]))


def test_leaving_the_loop_early_aborts_and_settles(rt: Coordinator) -> None:
    long = '{"expression": "' + " ".join(["x"] * 400) + '", "derivative": "1"}'
    rt.router.set_tiers([ScriptedTier("local", [long], repeat_last=True, bus=rt.bus, delay=0.002)])
    stream = rt.router.stream(Derivative, "d/dx", workflow_id="wf", max_tokens=1000)
    for _ in stream:
        break  # the generator is closed here: the request is aborted and waited for
    ledger = rt.budgets.get("wf")
    assert ledger.reserved == 0
    assert 0 < ledger.spent < rt.budgets.cost(0, 400)  # charged what ran, not the whole answer
    assert rt.router.generate(Derivative, "again", workflow_id="wf", max_tokens=1000).value


def test_only_the_scoped_requests_tokens_are_collected(rt: Coordinator) -> None:
    """Two requests of one workflow on two threads: each collector sees its own text."""
    rt.router.set_tiers(
        [
            ScriptedTier(
                "local",
                [lambda req: GOOD if "one" in req.messages[-1]["content"] else "{}"],
                repeat_last=True,
                bus=rt.bus,
            )
        ]
    )
    seen: dict[str, list[str]] = {"one": [], "two": []}

    def run(name: str) -> None:
        collector = PartialValues(rt.bus, lambda p: seen[name].append(p.text))
        with collector.scope(), contextlib.suppress(EpistemicYieldError):  # "two" yields
            rt.router.generate(Derivative, f"question {name}", workflow_id="wf")

    threads = [threading.Thread(target=run, args=(n,)) for n in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen["one"] and all("expression" in text for text in seen["one"])
    assert all("expression" not in text for text in seen["two"])


def test_tokens_events_reach_other_subscribers_too(rt: Coordinator) -> None:
    rt.router.set_tiers([ScriptedTier("local", [GOOD], bus=rt.bus)])
    events = rt.bus.history([EventType.TOKENS])
    before = len(events)
    list(rt.router.stream(Derivative, "d/dx", workflow_id="wf"))
    assert len(rt.bus.history([EventType.TOKENS])) > before

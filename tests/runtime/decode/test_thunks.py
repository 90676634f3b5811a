"""Lazy-of-Thought: thunks are declared with a cost and forced only on demand."""

from __future__ import annotations

import pytest
from coreason_runtime import EventBus, EventType
from coreason_runtime._exceptions import ThunkError
from coreason_runtime.decode import (
    DecodeEngine,
    DecodeSession,
    DemandExecutor,
    SympyVerifier,
    Thunk,
    expander,
    parse_thunks,
    thunkify,
)

from tests.runtime.decode.conftest import assert_consistent


def test_parse_thunks_finds_name_args_and_offsets() -> None:
    text = "a = ⟦deriv(x^3)⟧ and ⟦later⟧."
    found = parse_thunks(text)
    assert [(n, a) for n, a, *_ in found] == [("deriv", "x^3"), ("later", "")]
    assert text[found[0][2] : found[0][3]] == "⟦deriv(x^3)⟧"


def test_thunkify_turns_omitted_details_into_thunks() -> None:
    text, names = thunkify("The integral converges (details omitted). Then x = 2 (proof omitted).")
    assert names == ["omitted_1", "omitted_2"]
    assert "⟦omitted_1(The integral converges)⟧" in text
    assert "⟦omitted_2(Then x = 2)⟧" in text


def _session(engine: DecodeEngine, body: str) -> DecodeSession:
    s = engine.session("Work:", max_new_tokens=4)
    s.run(max_steps=1)
    s.pause()
    s.inject(body)
    return s


def _derivs(thunk: Thunk, context: str) -> str:
    import sympy
    from coreason_runtime.decode._verify import _caret, _parse

    return _caret(sympy.diff(_parse(thunk.args), sympy.Symbol("x")))


BODY = (
    "a = ⟦da(x^3)⟧\nb = ⟦db(sin(x))⟧\nc = ⟦dc(x^5)⟧\nThe case x > 0 holds, so the answer uses db.\n"
)


def test_declare_publishes_each_thunk_with_cost_and_offsets(
    engine: DecodeEngine, bus: EventBus
) -> None:
    s = _session(engine, BODY)
    ex = DemandExecutor(s, default=expander(_derivs, cost=5))
    assert [t.name for t in ex.declare()] == ["da", "db", "dc"]
    events = bus.history([EventType.THUNK_DECLARED])
    assert [e.data.cost for e in events] == [5, 5, 5]
    first = events[0].data
    assert engine.text.text(s.tokens[first.start : first.end]).strip().endswith("⟦da(x^3)⟧")


def test_only_thunks_a_downstream_step_uses_are_forced(engine: DecodeEngine, bus: EventBus) -> None:
    s = _session(engine, BODY)
    ex = DemandExecutor(s, default=expander(_derivs))
    assert ex.resolve() == ["db"]
    assert ex.pending == ["da", "dc"]
    assert "b = cos(x)\n" in s.output_text and "⟦da(x^3)⟧" in s.output_text
    assert [e.data.name for e in bus.history([EventType.THUNK_FORCED])] == ["db"]
    assert_consistent(s)


def test_verifier_demand_forces_the_thunk_it_cannot_check_without(engine: DecodeEngine) -> None:
    s = _session(engine, "d/dx x^2 = ⟦d2(x^2)⟧\nd/dx x^4 = 4x^3\n⟦unused(x^9)⟧ is not needed\n")
    ex = DemandExecutor(s, default=expander(_derivs))
    verdict = ex.satisfy(SympyVerifier())
    assert verdict.ok and verdict.checked == 2
    assert ex.pending == ["unused"]
    assert_consistent(s)


def test_dependencies_are_forced_first(engine: DecodeEngine) -> None:
    s = _session(engine, "p = ⟦base(x^2)⟧\nq = ⟦twice(⟦base⟧)⟧\n")
    order: list[str] = []

    def record(thunk: Thunk, context: str) -> str:
        order.append(thunk.name)
        return thunk.name.upper()

    ex = DemandExecutor(s, default=expander(record))
    ex.declare()
    ex.force("twice")
    assert order == ["base", "twice"]
    assert_consistent(s)


def test_cyclic_thunks_raise(engine: DecodeEngine) -> None:
    s = _session(engine, "⟦a(b)⟧ ⟦b(a)⟧\n")
    ex = DemandExecutor(s, default=expander(lambda t, c: "x"))
    ex.declare()
    ex.thunks["a"].deps = ("b",)
    with pytest.raises(ThunkError):
        ex.force("a")


def test_unknown_thunk_and_missing_expander_raise(engine: DecodeEngine) -> None:
    s = _session(engine, "⟦a(1)⟧\n")
    ex = DemandExecutor(s)
    with pytest.raises(ThunkError):
        ex.force("nope")
    with pytest.raises(ThunkError):
        ex.force("a")


def test_failing_expander_leaves_session_unchanged(engine: DecodeEngine) -> None:
    s = _session(engine, "v = ⟦boom(1)⟧\n")

    def boom(thunk: Thunk, context: str) -> str:
        raise RuntimeError("tool crashed")

    ex = DemandExecutor(s, default=expander(boom))
    before = s.tokens
    with pytest.raises(ThunkError):
        ex.force("boom")
    assert s.tokens == before and ex.pending == ["boom"]
    assert_consistent(s)


def test_eager_expansion_forces_everything(engine: DecodeEngine) -> None:
    s = _session(engine, BODY)
    ex = DemandExecutor(s, default=expander(_derivs))
    assert ex.force_all() == ["da", "db", "dc"]
    assert "a = 3*x^2\nb = cos(x)\nc = 5*x^4\n" in s.output_text
    assert_consistent(s)


def test_thunk_in_a_session_never_run_is_spliced_before_prefill(engine: DecodeEngine) -> None:
    s = engine.session("Work:", max_new_tokens=2)
    s.inject(BODY)
    ex = DemandExecutor(s, default=expander(_derivs))
    assert ex.resolve() == ["db"]
    assert "b = cos(x)\n" in s.text
    s.run()
    assert_consistent(s)

"""Lazy fields: a placeholder the grammar allows, forced only when a verifier reads it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from coreason_runtime import Coordinator, EventBus, EventType, RequestError, RuntimeConfig
from coreason_runtime import verifiers as V
from coreason_runtime.decode import DecodeEngine, DecodeSession
from coreason_runtime.models import LoadedModel
from coreason_runtime.tensor import ScriptedSteerableTier, ScriptedTier
from coreason_runtime.tensor._compiler import UniversalCompiler
from coreason_runtime.tensor._schema import SchemaSpec
from coreason_runtime.tensor._types import UnmeteredMeter
from coreason_runtime.verify import VerifyPolicy
from coreason_runtime.verify._driver import FieldAnswer, FieldAsk, VerifyJob
from coreason_runtime.verify._lazy import grammar_spec, lazy_pointers, with_placeholders
from coreason_runtime.verify._span import CountingMeter, SessionDraft
from pydantic import BaseModel, Field

from tests.runtime.decode.conftest import assert_consistent


class Work(BaseModel):
    derivative: str = Field(max_length=24, json_schema_extra={"lazy": True})
    note: str = Field(max_length=40, json_schema_extra={"lazy": True})


SPEC = grammar_spec(SchemaSpec.from_user(Work))
DEFERRED = '{"derivative": "⟦diff(x**3)⟧", "note": "⟦explain(power rule)⟧"}'


def test_lazy_fields_also_accept_a_placeholder() -> None:
    schema = Work.model_json_schema()
    assert lazy_pointers(schema) == ["/derivative", "/note"]
    lazy = with_placeholders(schema)
    assert lazy is not None
    alternatives = lazy["properties"]["derivative"]["anyOf"]
    assert alternatives[0]["maxLength"] == 24 and "⟦" in alternatives[1]["pattern"]
    assert with_placeholders({"type": "object", "properties": {"a": {"type": "string"}}}) is None


def test_the_local_grammar_accepts_a_placeholder_in_a_lazy_field(tiny_model: LoadedModel) -> None:
    compiled = UniversalCompiler(tiny_model, timeout=30).compile(SPEC)
    matcher = compiled.grammar.matcher(
        UniversalCompiler(tiny_model).info  # the tokenizer's llguidance view
    )
    ids = tiny_model.tokenizer.encode(DEFERRED, add_special_tokens=False)
    assert all(matcher.consume_token(t) for t in ids) and matcher.is_accepting()


@pytest.fixture
def rt(home: Path) -> Iterator[Coordinator]:
    runtime = Coordinator(RuntimeConfig(home=home, subgoal_cache=False, oracle=None))
    runtime.budgets.set("wf", ceiling=20_000)
    yield runtime
    runtime.close()


def test_a_placeholder_a_verifier_reads_is_forced_and_the_other_stays_unpaid(
    rt: Coordinator,
) -> None:
    rt.router.set_tiers([ScriptedSteerableTier("local", [DEFERRED])])
    res = rt.router.generate(
        Work, "d/dx x**3", workflow_id="wf", verify=V.derivative(of="x**3", result="derivative")
    )
    assert res.verified and res.value.derivative == "3*x**2"
    (forced,) = res.repairs
    assert forced.tier == "cas" and "forced" in forced.reason
    assert res.thunks == {"/note": ("explain", "power rule")}
    assert res.value.note == "⟦explain(power rule)⟧"


def test_a_consumer_forces_a_thunk_with_a_sub_request(rt: Coordinator) -> None:
    local = ScriptedSteerableTier("local", [DEFERRED, '{"value": "power rule: n x^(n-1)"}'])
    rt.router.set_tiers([local])
    res = rt.router.generate(Work, "d/dx x**3", workflow_id="wf")
    assert set(res.thunks) == {"/derivative", "/note"}
    forced = rt.router.force(res, "note")
    assert forced.value.note == "power rule: n x^(n-1)"
    assert set(forced.thunks) == {"/derivative"}
    assert forced.cost == pytest.approx(rt.budgets.spent("wf"))
    assert "explain(power rule)" in local.requests[1].messages[-1]["content"]
    with pytest.raises(RequestError, match="holds no thunk"):
        rt.router.force(forced, "note")


def test_a_black_box_tier_gets_no_placeholder_alternative(rt: Coordinator) -> None:
    oracle = ScriptedTier("oracle", ['{"derivative": "3*x**2", "note": "ok"}'])
    rt.router.set_tiers([oracle])
    rt.router.generate(Work, "d/dx x**3", workflow_id="wf")
    assert "⟦" not in str(oracle.requests[0].schema.openai)


# --- in a live session ---------------------------------------------------------------------


@pytest.fixture
def deferred(tiny_model: LoadedModel) -> Iterator[DecodeSession]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = DecodeEngine(tiny_model.model, tiny_model.tokenizer, bus=EventBus())
    s = engine.session("Differentiate x**3.", max_new_tokens=8)
    s.inject(DEFERRED)  # the answer as if the model had written it
    s.begin()
    s.step()  # prefill only: the session has KV for the whole answer
    yield s
    engine.close()
    torch.set_num_threads(threads)


def test_a_forced_thunk_is_redecoded_in_the_session_and_announced(
    deferred: DecodeSession,
) -> None:
    real = V.check(lambda v: [("derivative", "a thunk")] if "⟦" in v.derivative else [], "real")
    meter = CountingMeter(UnmeteredMeter())
    outcome = VerifyJob(VerifyPolicy.of(real, candidates=2), SPEC).run(
        SessionDraft(deferred), meter
    )
    assert "⟦diff" not in deferred.output_text and outcome.verified
    assert outcome.repairs[0].tier == "local" and "forced" in outcome.repairs[0].reason
    assert meter.tokens_out > 0
    forced = deferred.engine.bus.history([EventType.THUNK_FORCED])
    assert [e.data.name for e in forced] == ["diff", "explain"]  # a callable reads every field
    assert_consistent(deferred)


def test_a_thunk_no_verifier_reads_is_left_alone(deferred: DecodeSession) -> None:
    def cas(ask: FieldAsk) -> Iterator[FieldAnswer]:
        yield FieldAnswer('"3*x**2"', "cas")

    check = V.derivative(of="x**3", result="derivative")
    outcome = VerifyJob(VerifyPolicy.of(check), SPEC, "q", cas).run(SessionDraft(deferred))
    assert outcome.verified
    assert outcome.thunks == {"/note": ("explain", "power rule")}
    assert '"note": "⟦explain(power rule)⟧"' in deferred.output_text
    assert_consistent(deferred)

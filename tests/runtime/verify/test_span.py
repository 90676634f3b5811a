"""A rejected field re-decoded in its own decode session: the KV stays exact, every token paid."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import pytest
import torch
from coreason_runtime import BudgetExceededError, EventBus, EventType
from coreason_runtime import verifiers as V
from coreason_runtime.decode import DecodeEngine, DecodeSession, GrammarMask
from coreason_runtime.models import LoadedModel
from coreason_runtime.tensor._compiler import UniversalCompiler
from coreason_runtime.tensor._schema import SchemaSpec
from coreason_runtime.tensor._types import UnmeteredMeter
from coreason_runtime.verify import VerifyPolicy
from coreason_runtime.verify._driver import FieldAnswer, FieldAsk, VerifyJob
from coreason_runtime.verify._json import locate
from coreason_runtime.verify._span import CountingMeter, SessionDraft, span_schema
from pydantic import BaseModel, Field

from tests.runtime.decode.conftest import assert_consistent


class Pick(BaseModel):
    label: Literal["alpha", "beta", "gamma", "delta"]
    note: str = Field(max_length=6)


SPEC = SchemaSpec.from_user(Pick)


@pytest.fixture(scope="module")
def engine(tiny_model: LoadedModel) -> Iterator[DecodeEngine]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    eng = DecodeEngine(tiny_model.model, tiny_model.tokenizer, bus=EventBus())
    yield eng
    eng.close()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def grammar(tiny_model: LoadedModel) -> Any:
    return UniversalCompiler(tiny_model, timeout=30).compile(SPEC).grammar


@pytest.fixture
def session(engine: DecodeEngine, grammar: Any) -> DecodeSession:
    s = engine.session(
        "Pick a label.",
        grammar=GrammarMask(grammar.matcher(engine.info), engine.info),
        max_new_tokens=40,
    )
    s.run()
    assert Pick.model_validate_json(s.output_text)
    return s


def _not(label: str) -> V.Check:
    return V.check(lambda v: [] if v.label != label else [("label", f"not {label}")], "not")


def _first_label(session: DecodeSession) -> str:
    label: str = locate(session.output_text)[0]["label"]
    return label


def test_a_rejected_field_is_redecoded_in_place_and_the_rest_is_kept(
    session: DecodeSession,
) -> None:
    first = _first_label(session)
    note_before = locate(session.output_text)[0]["note"]
    job = VerifyJob(VerifyPolicy.of(_not(first)), SPEC)
    meter = CountingMeter(UnmeteredMeter())
    outcome = job.run(SessionDraft(session), meter)
    assert outcome.verified
    (repair,) = outcome.repairs
    assert (repair.field, repair.tier, repair.accepted) == ("/label", "local", True)
    value = Pick.model_validate_json(session.output_text)
    assert value.label != first and value.note == note_before
    assert (repair.tokens_in, repair.tokens_out) == (meter.tokens_in, meter.tokens_out)
    assert repair.tokens_out > 0 and repair.old == f'"{first}"'
    assert_consistent(session)


def test_the_span_grammar_keeps_the_whole_answer_in_the_request_grammar(
    session: DecodeSession,
) -> None:
    first = _first_label(session)
    job = VerifyJob(VerifyPolicy.of(_not(first), candidates=6), SPEC)
    job.run(SessionDraft(session), CountingMeter(UnmeteredMeter()))
    assert session.grammar is not None and session.grammar.accepting  # replayed, still whole


def test_no_candidate_passing_leaves_the_session_exactly_as_it_was(
    session: DecodeSession,
) -> None:
    before = session.tokens
    never = V.check(lambda v: [("label", "never")], "never")
    outcome = VerifyJob(VerifyPolicy.of(never, candidates=2), SPEC).run(
        SessionDraft(session), CountingMeter(UnmeteredMeter())
    )
    assert not outcome.verified and not outcome.repairs[0].accepted
    assert outcome.repairs[0].candidates == 2
    assert session.tokens == before
    assert_consistent(session)


class RefusingMeter:
    """Claims room, but refuses the third output token (another request took the ceiling)."""

    def __init__(self) -> None:
        self.tokens_out = 0

    @property
    def max_out(self) -> int:
        return 1000

    def check(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        if self.tokens_out + tokens_out > 2:
            msg = "ceiling reached"
            raise BudgetExceededError(msg)

    def charge(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        self.tokens_out += tokens_out


def test_a_refused_repair_token_stops_the_repair_and_rolls_it_back(
    session: DecodeSession,
) -> None:
    before = session.tokens
    meter = RefusingMeter()
    job = VerifyJob(VerifyPolicy.of(_not(_first_label(session))), SPEC)
    with pytest.raises(BudgetExceededError):
        job.run(SessionDraft(session), CountingMeter(meter))
    assert meter.tokens_out == 2  # charged what was decoded, and no more
    assert session.tokens == before
    assert_consistent(session)


def test_a_span_tier_answer_is_spliced_and_announced(session: DecodeSession) -> None:
    first = _first_label(session)
    other = next(x for x in ("alpha", "beta", "gamma") if x != first)
    asks: list[FieldAsk] = []

    def escalate(ask: FieldAsk) -> Iterator[FieldAnswer]:
        asks.append(ask)
        yield FieldAnswer(f'"{other}"', "cas", tokens_in=3, cost=3.0)

    only = VerifyPolicy.of(V.check(lambda v: [("label", "no")] if v.label != other else []))
    job = VerifyJob(only, SPEC, "q", escalate)
    outcome = job.run(SessionDraft(session), None)  # no meter: straight to the span tiers
    assert outcome.verified and Pick.model_validate_json(session.output_text).label == other
    assert [(r.tier, r.accepted) for r in outcome.repairs] == [("cas", True)]
    assert asks[0].pointer == "/label" and asks[0].value["label"] == first
    event = session.engine.bus.history([EventType.SPAN_REPAIRED])[-1]
    assert event.data.accepted and f'"{other}"' in event.data.new_text
    assert_consistent(session)


def test_an_answer_the_request_grammar_forbids_is_not_spliced(session: DecodeSession) -> None:
    before = session.tokens

    def escalate(ask: FieldAsk) -> Iterator[FieldAnswer]:
        yield FieldAnswer('"far too long"', "cas")  # note has max_length 6

    bad_note = V.check(lambda v: [("note", "wrong")], "note")
    job = VerifyJob(VerifyPolicy.of(bad_note, candidates=1), SPEC, "q", escalate)
    outcome = job.run(SessionDraft(session), None)  # no meter: no re-decoding
    assert [(r.tier, r.accepted) for r in outcome.repairs] == [("cas", False)]
    assert session.tokens == before


def test_an_expression_field_repairs_under_an_expression_pattern() -> None:
    class D(BaseModel):
        derivative: str = Field(max_length=20)

    schema = D.model_json_schema()
    checks = (V.derivative(of="x**2", result="derivative"),)
    sub = span_schema(schema, "/derivative", checks)
    assert sub is not None and sub["maxLength"] == 20 and "=" not in sub["pattern"]
    plain = span_schema(schema, "/derivative", (V.check(lambda v: None),))
    assert plain is not None and "pattern" not in plain

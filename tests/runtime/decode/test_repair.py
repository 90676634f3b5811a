"""Region-of-interest splicing: the spliced session equals a full recompute."""

from __future__ import annotations

import time

import pytest
from coreason_runtime import EventBus, EventType
from coreason_runtime._exceptions import DecodeError, SessionStateError, SpanError
from coreason_runtime.decode import DecodeEngine, DecodeSession, Sampler, repair_span

from tests.runtime.decode.conftest import assert_consistent

HOT = Sampler(temperature=1.0, seed=11)


@pytest.fixture
def done(engine: DecodeEngine) -> DecodeSession:
    s = engine.session("Differentiate x^3 + x.", max_new_tokens=24, sampler=HOT)
    s.run()
    return s


def test_replacement_text_is_spliced_and_kv_is_exact(done: DecodeSession, bus: EventBus) -> None:
    start, end = done.prompt_len + 10, done.prompt_len + 20
    before = done.tokens
    r = repair_span(done, start, end, replacement=" 3x^2 + 1")
    new = done.engine.encode(" 3x^2 + 1")
    assert done.tokens == before[:start] + tuple(new) + before[end:]
    assert r.new_end == start + len(new) and r.decoded_tokens == 0
    assert r.prefilled_tokens == len(new) + len(before) - end
    assert_consistent(done)
    event = bus.history([EventType.SPAN_REPAIRED])[-1]
    assert (event.data.start, event.data.old_end, event.data.new_end) == (
        start,
        end,
        r.new_end,
    )


def test_redecoded_span_keeps_prefix_and_suffix_and_kv_is_exact(done: DecodeSession) -> None:
    start, end = done.prompt_len + 5, done.prompt_len + 13
    before = done.tokens
    r = repair_span(done, start, end, sampler=Sampler(temperature=1.0, seed=99), stop=())
    assert 0 < r.decoded_tokens <= 2 * (end - start)
    assert done.tokens[:start] == before[:start]
    assert done.tokens[r.new_end :] == before[end:]
    assert_consistent(done)


def test_candidates_keep_the_first_accepted_span(done: DecodeSession) -> None:
    start, end = done.prompt_len + 5, done.prompt_len + 9
    seen: list[str] = []

    def accept(text: str) -> bool:
        seen.append(text)
        return len(seen) == 3

    r = repair_span(done, start, end, candidates=5, accept=accept, stop=(), max_tokens=4)
    assert r.accepted and r.candidates == 3
    assert r.new_text == seen[-1]
    assert_consistent(done)


def test_no_accepted_candidate_keeps_the_most_likely(done: DecodeSession) -> None:
    r = repair_span(
        done,
        done.prompt_len + 2,
        done.prompt_len + 6,
        candidates=3,
        accept=lambda t: False,
        stop=(),
        max_tokens=4,
    )
    assert not r.accepted and r.candidates == 3
    assert_consistent(done)


def test_repair_at_the_end_has_no_suffix(done: DecodeSession) -> None:
    n = len(done)
    repair_span(done, n - 4, n, replacement=" end")
    assert done.engine.text.text(done.tokens[n - 4 :]) == " end"
    assert_consistent(done)


def test_callable_replacement_sees_the_span(done: DecodeSession) -> None:
    start, end = done.prompt_len + 3, done.prompt_len + 7
    old = done.engine.text.text(done.tokens[start:end])
    r = repair_span(done, start, end, replacement=lambda ctx: ctx.span.upper() + "!")
    assert r.new_text == old.upper() + "!"
    assert_consistent(done)


@pytest.mark.parametrize("span", [(0, 3), (5, 5), (9, 4), (-1, 3), (10, 10_000)])
def test_out_of_range_span_raises_and_keeps_session(
    done: DecodeSession, span: tuple[int, int]
) -> None:
    before = done.tokens
    with pytest.raises(SpanError):
        repair_span(done, *span, replacement="x")
    assert done.tokens == before
    assert_consistent(done)


def test_span_over_a_special_token_raises(done: DecodeSession) -> None:
    special = next(
        i for i in range(1, done.prompt_len) if done.tokens[i] in done.engine.text.special_ids
    )
    before = done.tokens
    with pytest.raises(SpanError):
        repair_span(done, special, special + 2, replacement="x")
    assert done.tokens == before
    assert_consistent(done)


def test_failing_replacement_leaves_session_unchanged(done: DecodeSession) -> None:
    before = done.tokens

    def broken(ctx: object) -> str:
        raise RuntimeError("tier down")

    with pytest.raises(DecodeError):
        repair_span(done, done.prompt_len + 2, done.prompt_len + 6, replacement=broken)
    assert done.tokens == before
    assert_consistent(done)


def test_repair_of_a_session_running_on_the_engine_is_refused(engine: DecodeEngine) -> None:
    s = engine.session("Long:", max_new_tokens=100_000, sampler=HOT)
    engine.submit(s)
    deadline = time.monotonic() + 30
    while s.n_generated < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    with pytest.raises(SessionStateError):
        repair_span(s, s.prompt_len, s.prompt_len + 2, replacement="x")
    s.pause(timeout=30)
    assert_consistent(s)


def test_splice_that_breaks_the_grammar_raises_and_restores(engine: DecodeEngine) -> None:
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_regex(r"[0-9]{6}")
    s = engine.session("Digits:", max_new_tokens=10, sampler=HOT, grammar=grammar)
    s.run()
    before = s.tokens
    with pytest.raises(SpanError):
        repair_span(s, s.prompt_len + 1, s.prompt_len + 2, replacement="abc")
    assert s.tokens == before
    assert_consistent(s)
    assert not s.grammar.matcher.is_error()

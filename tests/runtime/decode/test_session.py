"""Decode sessions: explicit KV, pause/resume/inject, checkpoints, priorities."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch
from coreason_runtime import EventBus, EventType
from coreason_runtime._exceptions import RequestError, SessionStateError
from coreason_runtime.decode import DecodeEngine, Preemptible, Sampler, SessionState

from tests.runtime.decode.conftest import assert_consistent

HOT = Sampler(temperature=1.0, seed=7)


def test_greedy_decode_matches_generate(engine: DecodeEngine) -> None:
    s = engine.session("Differentiate x^3.", max_new_tokens=12)
    s.run()
    ids = torch.tensor([list(s.tokens[: s.prompt_len])])
    ref = engine.model.generate(
        ids,
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=sorted(engine.stop_ids),
        pad_token_id=0,
    )
    assert list(s.tokens) == ref[0].tolist()[: len(s)]


def test_kv_after_decoding_equals_fresh_prefill(engine: DecodeEngine) -> None:
    s = engine.session("Hello", max_new_tokens=20, sampler=HOT)
    s.run()
    assert s.state is SessionState.FINISHED
    assert_consistent(s)


def test_run_with_max_steps_stops_without_finishing(engine: DecodeEngine) -> None:
    s = engine.session("Hello", max_new_tokens=50, sampler=HOT)
    s.run(max_steps=5)
    assert s.n_generated == 5
    assert s.state is SessionState.RUNNING


def test_pause_inside_forward_pass_crops_kv_and_rewinds_rng(
    engine: DecodeEngine, bus: EventBus
) -> None:
    ref = engine.session("Count:", max_new_tokens=12, sampler=HOT)
    ref.run()
    s = engine.session("Count:", max_new_tokens=12, sampler=HOT)
    s.run(max_steps=4)
    fired: list[int] = []

    def pause_mid_forward(module: Any, args: Any) -> None:
        if not fired:
            fired.append(len(s))
            s.pause(wait=False)

    layer = engine.model.model.layers[1]
    handle = layer.register_forward_pre_hook(pause_mid_forward)
    try:
        s.run()
    finally:
        handle.remove()
    assert s.state is SessionState.PAUSED
    assert len(s) == fired[0]
    assert_consistent(s)
    paused = bus.history([EventType.DECODE_PAUSED])[-1]
    assert paused.data.in_forward is True
    assert paused.data.offset == len(s)
    s.resume()
    s.run()
    assert s.tokens == ref.tokens


def test_pause_from_another_thread_parks_the_session(engine: DecodeEngine) -> None:
    s = engine.session("Story:", max_new_tokens=100_000, sampler=HOT)
    s.run(max_steps=2)
    before = len(s.tokens)
    t = threading.Thread(target=s.run)
    t.start()
    # pause only once the other thread is decoding (a synchronisation, not a timing)
    deadline = time.monotonic() + 30
    while len(s.tokens) <= before + 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert len(s.tokens) > before + 2, "the driving thread never decoded"
    s.pause(timeout=30)  # raises DecodeError unless the session parks in time
    t.join(timeout=30)
    assert not t.is_alive(), "run() kept decoding after the pause"
    assert s.state is SessionState.PAUSED
    assert len(s.tokens) < s.prompt_len + 100_000  # parked, not finished
    assert_consistent(s)  # parked at a boundary: KV and logits are those of its tokens


def test_resume_with_ctx_delta_prefills_only_the_injected_tokens(engine: DecodeEngine) -> None:
    s = engine.session("Search:", max_new_tokens=40, sampler=HOT)
    s.run(max_steps=6)
    s.pause()
    seen: list[int] = []
    handle = engine.model.model.embed_tokens.register_forward_hook(
        lambda m, args, out: seen.append(int(args[0].shape[-1]))
    )
    try:
        s.resume(ctx_delta=" [tool: 42]")
    finally:
        handle.remove()
    assert seen == [len(engine.encode(" [tool: 42]"))]
    assert_consistent(s)
    s.run()
    assert_consistent(s)


def test_inject_records_offsets_in_an_event(engine: DecodeEngine, bus: EventBus) -> None:
    s = engine.session("Search:", max_new_tokens=10)
    s.run(max_steps=3)
    s.pause()
    start, end = s.inject("result=5")
    event = bus.history([EventType.DECODE_INJECTED])[-1]
    assert (event.data.start, event.data.end) == (start, end)
    assert engine.text.text(s.tokens[start:end]) == "result=5"


def test_resume_without_pause_raises_and_keeps_session(engine: DecodeEngine) -> None:
    s = engine.session("Hi", max_new_tokens=8, sampler=HOT)
    s.run(max_steps=3)
    before = s.tokens
    with pytest.raises(SessionStateError):
        s.resume(ctx_delta="x")
    assert s.tokens == before
    assert_consistent(s)


def test_inject_into_finished_session_raises_and_keeps_session(engine: DecodeEngine) -> None:
    s = engine.session("Hi", max_new_tokens=4, sampler=HOT)
    s.run()
    before = s.tokens
    with pytest.raises(SessionStateError):
        s.inject("more")
    with pytest.raises(SessionStateError):
        s.pause()
    assert s.tokens == before
    assert_consistent(s)


def test_inject_into_running_session_is_refused(engine: DecodeEngine) -> None:
    s = engine.session("Hi", max_new_tokens=8)
    s.run(max_steps=2)
    with pytest.raises(SessionStateError):
        s.inject("x")
    assert_consistent(s)


def test_bad_session_parameters_are_request_errors(engine: DecodeEngine) -> None:
    with pytest.raises(RequestError):
        engine.session("", max_new_tokens=3)
    with pytest.raises(RequestError):
        engine.session("x", max_new_tokens=0)
    with pytest.raises(RequestError):
        Sampler(temperature=-1)


def test_checkpoint_restore_reproduces_the_continuation(engine: DecodeEngine) -> None:
    s = engine.session("Go", max_new_tokens=30, sampler=HOT)
    s.run(max_steps=5)
    cp = s.checkpoint()
    s.run(max_steps=8)
    first = s.tokens
    s.restore(cp)
    assert s.tokens == cp.tokens
    assert_consistent(s)
    s.resume()
    s.run(max_steps=8)
    assert s.tokens == first


def test_grammar_constrains_the_output(engine: DecodeEngine) -> None:
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_regex(r"[0-9]{3}")
    s = engine.session("Number:", max_new_tokens=10, sampler=HOT, grammar=grammar)
    s.run()
    assert s.output_text.isdigit() and len(s.output_text) == 3


def test_checkpoint_restores_the_grammar_state(engine: DecodeEngine) -> None:
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_regex(r"[a-c]{6}")
    s = engine.session("Letters:", max_new_tokens=10, sampler=HOT, grammar=grammar)
    s.run(max_steps=2)
    cp = s.checkpoint()
    s.run()
    done = s.output_text
    s.restore(cp)
    s.resume()
    s.run()
    assert s.output_text == done and len(done) == 6


def test_steps_carry_token_offsets(engine: DecodeEngine) -> None:
    s = engine.session("Q", max_new_tokens=1)
    s.inject("a = 1\nb = 2\n")
    steps = s.steps()
    assert [st.text for st in steps] == ["a = 1", "b = 2"]
    assert engine.text.text(s.tokens[steps[1].start : steps[1].end]).strip() == "b = 2"


def test_sessions_implement_the_preemptible_protocol(engine: DecodeEngine) -> None:
    from coreason_runtime.sched import Preemptible as SchedPreemptible

    s = engine.session("Q")
    assert isinstance(s, Preemptible)
    assert isinstance(s, SchedPreemptible)
    assert SchedPreemptible in Preemptible.__mro__  # one protocol, extended with a priority


def test_higher_priority_session_preempts_a_lower_one(engine: DecodeEngine, bus: EventBus) -> None:
    low = engine.session("Low:", max_new_tokens=100_000, sampler=HOT, priority=0, name="low")
    engine.submit(low)
    deadline = time.monotonic() + 30
    while low.n_generated < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    high = engine.session("High:", max_new_tokens=15, sampler=HOT, priority=5, name="high")
    engine.submit(high)
    assert high.wait(timeout=60) is SessionState.FINISHED
    assert low.state is SessionState.RUNNING
    low.pause(timeout=30)
    preempted = [
        e
        for e in bus.history([EventType.DECODE_PAUSED])
        if e.data.session == "low" and e.data.reason == "preempted"
    ]
    assert preempted
    assert_consistent(low)
    assert_consistent(high)

"""The decode engine on the real SmolLM2: same tokens as generate(), exact splices and pauses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from coreason_runtime.decode import DecodeEngine, Sampler, SessionState, SympyVerifier, repair_span

from tests._fixtures.serve import shared_model_cache
from tests.runtime.decode.conftest import assert_consistent

pytestmark = pytest.mark.model


def test_greedy_session_matches_generate(real_engine: DecodeEngine) -> None:
    s = real_engine.session("What is the derivative of x^2?", max_new_tokens=12)
    s.run()
    ids = torch.tensor([list(s.tokens[: s.prompt_len])])
    ref = real_engine.model.generate(
        ids, max_new_tokens=12, do_sample=False, eos_token_id=sorted(real_engine.stop_ids)
    )
    assert list(s.tokens) == ref[0].tolist()[: len(s)]


def test_repair_on_the_real_model_equals_a_full_recompute(real_engine: DecodeEngine) -> None:
    s = real_engine.session("Differentiate x^3.", max_new_tokens=4)
    s.inject("d/dx x^3 = 2x^2\nSo the slope at 1 is 3.\n")
    s.run(max_steps=2)
    f = SympyVerifier().check(s.output_text).failures[0]
    t0, t1 = s.char_span_to_tokens(f.start, f.end)
    repair_span(s, t0, t1, replacement=" " + f.expected)
    assert "d/dx x^3 =  3*x^2" in s.output_text or "d/dx x^3 = 3*x^2" in s.output_text
    assert SympyVerifier().check(s.output_text).ok
    assert_consistent(s, atol=1e-3)


def test_pause_mid_forward_on_the_real_model_resumes_identically(real_engine: DecodeEngine) -> None:
    hot = Sampler(temperature=0.8, seed=5)
    ref = real_engine.session("Name three prime numbers.", max_new_tokens=8, sampler=hot)
    ref.run()
    s = real_engine.session("Name three prime numbers.", max_new_tokens=8, sampler=hot)
    s.run(max_steps=3)
    fired: list[int] = []

    def pause_at_layer_15(module: Any, args: Any) -> None:
        if not fired:
            fired.append(1)
            s.pause(wait=False)

    handle = real_engine.model.model.layers[15].register_forward_pre_hook(pause_at_layer_15)
    try:
        s.run()
    finally:
        handle.remove()
    assert s.state is SessionState.PAUSED
    assert_consistent(s, atol=1e-3)
    s.resume()
    s.run()
    assert s.tokens == ref.tokens


def test_for_runtime_builds_an_engine_on_the_runtime_bus(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coreason_runtime import Coordinator, EventType

    monkeypatch.setenv("COREASON_MODEL_CACHE", str(shared_model_cache()))
    with Coordinator() as rt:
        engine = rt.engine("decode", DecodeEngine.for_runtime)
        s = engine.session("Hi", max_new_tokens=1)
        s.run()
        assert engine.bus is rt.bus
        assert rt.bus.history([EventType.DECODE_FINISHED])
        engine.close()

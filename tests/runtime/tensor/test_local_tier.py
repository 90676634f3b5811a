"""The local tier: masked decoding over an explicit KV cache, budgets, prefix reuse, events."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from coreason_runtime import (
    BudgetExceededError,
    Controls,
    EventBus,
    EventType,
    GrammarDeadEndError,
    RequestError,
    SchemaCompileError,
    TierTimeoutError,
    WorkflowAbortedError,
)
from coreason_runtime.events import PrefixReused
from coreason_runtime.models import LoadedModel, tiny_llama
from coreason_runtime.tensor._compiler import UniversalCompiler
from coreason_runtime.tensor._local import LocalTier
from coreason_runtime.tensor._prefix import PrefixCache
from coreason_runtime.tensor._schema import CompiledSchema
from coreason_runtime.tensor._types import SteerableTier, TierRequest, UnmeteredMeter
from pydantic import BaseModel, Field


class Reading(BaseModel):
    """Bounded on purpose: a random model must be able to finish it within max_tokens."""

    sensor: str = Field(max_length=12)
    ok: bool
    level: int = Field(ge=0, le=99)
    unit: str = Field(pattern="^(m|s|kg)$")


class CeilingMeter:
    """A meter with a hard ceiling on output tokens, raising like the BudgetCage does."""

    def __init__(self, max_in: int = 10**9, max_out: int = 10**9) -> None:
        self.max_in, self.limit_out = max_in, max_out
        self.tokens_in = self.tokens_out = 0

    @property
    def max_out(self) -> int:
        return self.limit_out - self.tokens_out

    def ensure(
        self, tokens_in: int = 0, tokens_out: int = 0, *, interrupted: object = None
    ) -> bool:
        over_in = self.tokens_in + tokens_in > self.max_in
        if over_in or self.tokens_out + tokens_out > self.limit_out:
            msg = "ceiling reached"
            raise BudgetExceededError(msg, ceiling=float(self.max_in + self.limit_out))
        return True

    def check(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        self.ensure(tokens_in, tokens_out)

    def charge(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        over_in = self.tokens_in + tokens_in > self.max_in
        if over_in or self.tokens_out + tokens_out > self.limit_out:
            msg = "ceiling crossed"
            raise BudgetExceededError(msg, ceiling=float(self.max_in + self.limit_out))
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out

    def correct(self, tokens_in: int, tokens_out: int) -> None:
        self.tokens_in, self.tokens_out = tokens_in, tokens_out


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Two OpenMP threads spin against each other on a loaded 2-core box; one is faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tier(tiny_model: LoadedModel) -> LocalTier:
    return LocalTier(tiny_model, UniversalCompiler(tiny_model, timeout=30.0))


@pytest.fixture(scope="module")
def reading(tier: LocalTier) -> CompiledSchema:
    return tier.compiler.compile(Reading)


def _request(schema: CompiledSchema, **kw: Any) -> TierRequest:
    base: dict[str, Any] = {
        "messages": [{"role": "user", "content": "Report the sensor."}],
        "schema": schema,
        "max_tokens": 120,
        "workflow_id": "wf-local",
    }
    return TierRequest(**{**base, **kw})


def test_local_tier_is_steerable(tier: LocalTier) -> None:
    assert isinstance(tier, SteerableTier)
    assert tier.name == "local"


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_model_under_the_mask_produces_valid_json(
    tier: LocalTier, reading: CompiledSchema, seed: int
) -> None:
    out = tier.complete(_request(reading, temperature=1.0, seed=seed), UnmeteredMeter())
    value = reading.validate_text(out.text)
    assert isinstance(value, Reading)
    assert out.finish_reason == "stop"


def test_greedy_decoding_is_deterministic(tier: LocalTier, reading: CompiledSchema) -> None:
    a = tier.complete(_request(reading), UnmeteredMeter()).text
    b = tier.complete(_request(reading), UnmeteredMeter()).text
    assert a == b


def test_same_seed_samples_the_same_answer(tier: LocalTier, reading: CompiledSchema) -> None:
    a = tier.complete(_request(reading, temperature=1.0, seed=7), UnmeteredMeter()).text
    b = tier.complete(_request(reading, temperature=1.0, seed=7), UnmeteredMeter()).text
    assert a == b


def test_output_reports_the_tokens_it_charged(tier: LocalTier, reading: CompiledSchema) -> None:
    meter = UnmeteredMeter()
    out = tier.complete(_request(reading), meter)
    assert meter.tokens_in == out.tokens_in > 0
    # every sampled token is charged, the end-of-sequence token included when it was sampled
    assert meter.tokens_out in {out.tokens_out, out.tokens_out + 1}


def test_prompt_over_budget_raises_before_decoding(
    tier: LocalTier, reading: CompiledSchema
) -> None:
    meter = CeilingMeter(max_in=5)
    with pytest.raises(BudgetExceededError):
        tier.complete(_request(reading), meter)
    assert meter.tokens_out == 0


def test_output_budget_stops_decoding(tier: LocalTier, reading: CompiledSchema) -> None:
    meter = CeilingMeter(max_out=4)
    with pytest.raises(BudgetExceededError):
        tier.complete(_request(reading), meter)
    assert meter.tokens_out == 4


def test_reused_prefix_gives_the_same_answer(tiny_model: LoadedModel) -> None:
    bus = EventBus()
    fresh = LocalTier(tiny_model, bus=bus)
    schema = fresh.compiler.compile(Reading)
    cold = fresh.complete(_request(schema), UnmeteredMeter())
    warm = fresh.complete(_request(schema), UnmeteredMeter())
    assert warm.text == cold.text
    assert cold.extra["reused_tokens"] == 0
    assert warm.extra["reused_tokens"] == warm.tokens_in - 1
    events = bus.history([EventType.PREFIX_REUSED])
    assert events[-1].data == PrefixReused(reused=warm.tokens_in - 1, prefill=1)


def test_prefix_cache_stays_within_its_token_bound(tiny_model: LoadedModel) -> None:
    small = LocalTier(tiny_model, prefix_cache_tokens=400)
    schema = small.compiler.compile(Reading)
    for word in ("alpha", "beta", "gamma"):
        msgs = [{"role": "user", "content": f"{word} " * 40}]
        small.complete(_request(schema, messages=msgs), UnmeteredMeter())
        assert small.prefix_cache.tokens <= 400


def test_tokens_stream_as_events(tiny_model: LoadedModel) -> None:
    bus = EventBus()
    streaming = LocalTier(tiny_model, bus=bus, stream_every=4)
    schema = streaming.compiler.compile(Reading)
    out = streaming.complete(_request(schema), UnmeteredMeter())
    events = bus.history([EventType.TOKENS])
    assert "".join(e.data.delta for e in events) == out.text
    assert {(e.workflow_id, e.data.tier) for e in events} == {("wf-local", "local")}


def test_timeout_raises_tier_timeout(tier: LocalTier, reading: CompiledSchema) -> None:
    with pytest.raises(TierTimeoutError):
        tier.complete(_request(reading, timeout=0.0), UnmeteredMeter())


def test_max_tokens_cuts_the_answer_short(tier: LocalTier, reading: CompiledSchema) -> None:
    out = tier.complete(_request(reading, max_tokens=3), UnmeteredMeter())
    assert out.finish_reason == "length"
    assert out.tokens_out == 3


def test_zero_max_tokens_is_a_request_error(tier: LocalTier, reading: CompiledSchema) -> None:
    with pytest.raises(RequestError):
        tier.complete(_request(reading, max_tokens=0), UnmeteredMeter())


def test_schema_without_grammar_raises_its_compile_error(tier: LocalTier) -> None:
    bad = tier.compiler.compile({"type": "integer", "minimum": 5, "maximum": 1})
    with pytest.raises(SchemaCompileError):
        tier.complete(_request(bad), UnmeteredMeter())


def test_model_that_cannot_spell_the_grammar_is_a_dead_end(model_tokenizer: Any) -> None:
    mute = LocalTier(tiny_llama(model_tokenizer, seed=0, head_size=8))
    schema = mute.compiler.compile(Reading)
    with pytest.raises(GrammarDeadEndError):
        mute.complete(_request(schema), UnmeteredMeter())


def test_concurrent_requests_match_serial_ones(tier: LocalTier, reading: CompiledSchema) -> None:
    expected = tier.complete(_request(reading), UnmeteredMeter()).text
    results: list[str] = []

    def run() -> None:
        results.append(tier.complete(_request(reading), UnmeteredMeter()).text)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 3


def test_concurrent_requests_decode_in_one_batch_as_each_would_alone(
    tier: LocalTier, reading: CompiledSchema
) -> None:
    requests = [_request(reading, temperature=1.0, seed=i, workflow_id=f"wf{i}") for i in range(4)]
    expected = [tier.complete(r, UnmeteredMeter()).text for r in requests]
    tier.engine.largest_batch = 0
    results: dict[int, str] = {}
    start = threading.Barrier(len(requests))

    def run(i: int) -> None:
        start.wait()
        results[i] = tier.complete(requests[i], UnmeteredMeter()).text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(expected)) > 1  # the seeds give different answers
    assert [results[i] for i in range(len(requests))] == expected
    assert tier.engine.largest_batch >= 2  # their tokens shared forward passes


def test_complete_text_streams_an_unconstrained_answer(tier: LocalTier) -> None:
    deltas: list[str] = []
    out = tier.complete_text(
        [{"role": "user", "content": "hi"}], 12, on_delta=deltas.append, ignore_eos=True
    )
    assert out.tokens_out == 12
    assert "".join(deltas) == out.text


def test_complete_text_honours_a_grammar(tier: LocalTier, reading: CompiledSchema) -> None:
    out = tier.complete_text(
        [{"role": "user", "content": "hi"}], 120, grammar=reading, temperature=1.0, seed=5
    )
    assert isinstance(reading.validate_text(out.text), Reading)


@pytest.mark.model
def test_real_model_answers_with_valid_json(real_model: LoadedModel) -> None:
    class Sum(BaseModel):
        result: int

    real = LocalTier(real_model)
    schema = real.compiler.compile(Sum)
    req = TierRequest(
        messages=[{"role": "user", "content": "What is 2 + 3?"}],
        schema=schema,
        max_tokens=16,
        workflow_id="wf-real",
    )
    out = real.complete(req, UnmeteredMeter())
    assert isinstance(schema.validate_text(out.text), Sum)
    assert out.model == real_model.name


def _cache_of(n: int, fill: float) -> Any:
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer in range(2):
        cache.update(torch.full((1, 1, n, 2), fill), torch.full((1, 1, n, 2), fill), layer)
    return cache


def test_prefix_cache_reuses_the_longest_shared_prefix() -> None:
    pc = PrefixCache(max_tokens=100)
    pc.store([1, 2, 3], _cache_of(3, 1.0))
    pc.store([1, 2, 9, 9, 9], _cache_of(5, 2.0))
    cache, reused = pc.lookup([1, 2, 9, 9, 7, 7])
    assert reused == 4
    assert cache.get_seq_length() == 4
    assert float(cache.layers[0].keys[0, 0, 0, 0]) == 2.0


def test_prefix_cache_leaves_one_prompt_token_to_prefill() -> None:
    pc = PrefixCache(max_tokens=100)
    pc.store([1, 2, 3], _cache_of(3, 1.0))
    _, reused = pc.lookup([1, 2, 3])
    assert reused == 2


def test_prefix_cache_evicts_least_recently_used_entries() -> None:
    pc = PrefixCache(max_tokens=6)
    pc.store([1, 1, 1], _cache_of(3, 1.0))
    pc.store([2, 2, 2], _cache_of(3, 2.0))
    pc.lookup([1, 1, 1, 5])  # touch the first entry
    pc.store([3, 3, 3], _cache_of(3, 3.0))
    assert pc.tokens == 6
    assert pc.lookup([2, 2, 2, 5])[1] == 0
    assert pc.lookup([1, 1, 1, 5])[1] == 3


def _on_layer_call(model: Any, n: int, action: Any) -> Any:
    """Run ``action()`` once, when decoder layer 1 is entered for the ``n``-th time."""
    calls = [0]

    def hook(module: Any, args: Any) -> None:
        calls[0] += 1
        if calls[0] == n:
            action()

    return model.model.layers[1].register_forward_pre_hook(hook)


def test_a_pause_lands_inside_a_forward_pass_and_resume_gives_the_same_answer(
    tiny_model: LoadedModel,
) -> None:
    bus = EventBus()
    controls = Controls(bus)
    fresh = LocalTier(tiny_model, bus=bus)
    schema = fresh.compiler.compile(Reading)
    ref = LocalTier(tiny_model).complete(_request(schema), UnmeteredMeter())
    paused = threading.Event()
    bus.subscribe(lambda e: paused.set(), EventType.DECODE_PAUSED)
    handle = _on_layer_call(tiny_model.model, 6, lambda: controls.pause("wf-local"))
    out: list[Any] = []
    with controls.scope("wf-local") as ticket:
        worker = threading.Thread(
            target=lambda: out.append(
                fresh.complete(_request(schema, ticket=ticket), UnmeteredMeter())
            )
        )
        try:
            worker.start()
            assert paused.wait(30)
            event = bus.history([EventType.DECODE_PAUSED])[-1]
            assert event.data.in_forward is True
            assert worker.is_alive()  # held at the pause, not finished
        finally:
            handle.remove()
            controls.resume("wf-local")
            worker.join(30)
    assert out[0].text == ref.text


def test_an_abort_mid_pass_charges_what_ran_and_caches_nothing_partial(
    tiny_model: LoadedModel,
) -> None:
    controls = Controls()
    fresh = LocalTier(tiny_model)
    schema = fresh.compiler.compile(Reading)
    meter = UnmeteredMeter()
    handle = _on_layer_call(tiny_model.model, 9, lambda: controls.abort("wf-local"))
    try:
        with controls.scope("wf-local") as ticket, pytest.raises(WorkflowAbortedError):
            fresh.complete(_request(schema, ticket=ticket), meter)
    finally:
        handle.remove()
    assert meter.tokens_in > 0
    assert 0 < meter.tokens_out < 120
    # the abandoned pass left layers of unequal length: nothing of it may be reused
    again = fresh.complete(_request(schema), UnmeteredMeter())
    ref = LocalTier(tiny_model).complete(_request(schema), UnmeteredMeter())
    assert again.text == ref.text


class Note(BaseModel):
    """Unbounded strings: a random model fills them until the tokens run out."""

    title: str
    tags: list[str]
    count: int


@pytest.mark.parametrize("seed", [0, 1])
def test_a_tight_max_tokens_closes_the_value_instead_of_cutting_it(
    tier: LocalTier, seed: int
) -> None:
    note = tier.compiler.compile(Note)
    out = tier.complete(_request(note, max_tokens=40, temperature=1.0, seed=seed), UnmeteredMeter())
    assert out.tokens_out <= 40
    assert isinstance(note.validate_text(out.text), Note)
    assert out.finish_reason == "stop"
    assert out.closed in {"budget", "repetition"}


def test_a_refused_schema_decodes_under_its_relaxation(tier: LocalTier) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "not": {"const": 3}}, "ok": {"type": "boolean"}},
        "required": ["n", "ok"],
    }
    compiled = tier.compiler.compile(schema)
    assert compiled.relaxed == ("not",)
    out = tier.complete(_request(compiled, max_tokens=40), UnmeteredMeter())
    assert set(json.loads(out.text)) == {"n", "ok"}  # the grammar still shaped the value

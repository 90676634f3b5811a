"""Continuous batching: sessions on the engine's thread step together in one forward pass."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from coreason_runtime._exceptions import BudgetExceededError, TierTimeoutError
from coreason_runtime.decode import DecodeEngine, DecodeSession, Sampler, SessionState
from coreason_runtime.decode._batch import pick_batch

from tests.runtime.decode.conftest import assert_consistent

PROMPTS = ["Differentiate x^3.", "Hello", "List three primes, then stop.", "Q: 2+2?\nA:"]
JSON_GRAMMAR = r"%llguidance {}" + '\nstart: "{\\"a\\": " /[0-9]{1,4}/ "}"'


# the tiny random model's greedy choice is one token over and over; seeded sampling from its
# flat distributions tells sessions (and any mix-up of their logits or RNGs) apart
def _hot(seed: int) -> Sampler:
    return Sampler(temperature=1.0, seed=seed)


def _alone(engine: DecodeEngine, prompt: str, **kw: object) -> tuple[int, ...]:
    s = engine.session(prompt, **kw)  # type: ignore[arg-type]
    s.run()
    return s.output_ids


def _together(engine: DecodeEngine, sessions: list[DecodeSession]) -> None:
    for s in sessions:
        engine.submit(s)
    for s in sessions:
        assert s.wait(timeout=120) is SessionState.FINISHED


def test_batched_outputs_equal_each_session_alone(engine: DecodeEngine) -> None:
    alone = [
        _alone(engine, p, max_new_tokens=16 + 3 * i, sampler=_hot(i)) for i, p in enumerate(PROMPTS)
    ]
    sessions = [
        engine.session(p, max_new_tokens=16 + 3 * i, sampler=_hot(i)) for i, p in enumerate(PROMPTS)
    ]
    _together(engine, sessions)
    assert len(set(alone)) == len(PROMPTS)  # the sessions' outputs differ
    assert engine.largest_batch == len(PROMPTS)
    assert [s.output_ids for s in sessions] == alone
    for s in sessions:
        assert_consistent(s)


def test_each_session_keeps_its_own_grammar(engine: DecodeEngine) -> None:
    alone = _alone(engine, "Number:", max_new_tokens=12, grammar=JSON_GRAMMAR, sampler=_hot(1))
    free = _alone(engine, "Number:", max_new_tokens=12, sampler=_hot(1))
    sessions = [
        engine.session("Number:", max_new_tokens=12, grammar=JSON_GRAMMAR, sampler=_hot(1)),
        engine.session("Number:", max_new_tokens=12, sampler=_hot(1)),
    ]
    _together(engine, sessions)
    assert engine.largest_batch == 2
    assert sessions[0].output_ids == alone
    assert sessions[0].output_text.startswith('{"a": ')
    assert sessions[1].output_ids == free


def test_a_session_joins_a_running_batch_at_a_token_boundary(engine: DecodeEngine) -> None:
    alone = [_alone(engine, p, max_new_tokens=30, sampler=_hot(2)) for p in PROMPTS[:2]]
    first = engine.session(PROMPTS[0], max_new_tokens=30, sampler=_hot(2))
    engine.submit(first)
    deadline = time.monotonic() + 30
    while first.n_generated < 5 and time.monotonic() < deadline:
        time.sleep(0.002)
    second = engine.session(PROMPTS[1], max_new_tokens=30, sampler=_hot(2))
    _together(engine, [second])
    assert first.wait(timeout=60) is SessionState.FINISHED
    assert [first.output_ids, second.output_ids] == alone
    assert engine.largest_batch == 2


def test_a_paused_session_leaves_the_batch_and_the_others_go_on(engine: DecodeEngine) -> None:
    alone = [_alone(engine, p, max_new_tokens=40, sampler=_hot(2)) for p in PROMPTS[:3]]
    sessions = [engine.session(p, max_new_tokens=40, sampler=_hot(2)) for p in PROMPTS[:3]]
    for s in sessions:
        engine.submit(s)
    deadline = time.monotonic() + 30
    while sessions[1].n_generated < 4 and time.monotonic() < deadline:
        time.sleep(0.001)
    sessions[1].pause(timeout=30)
    paused_at = sessions[1].n_generated
    for s in (sessions[0], sessions[2]):
        assert s.wait(timeout=60) is SessionState.FINISHED
    assert sessions[1].state is SessionState.PAUSED
    assert sessions[1].n_generated == paused_at  # it did not step while parked
    assert_consistent(sessions[0])
    sessions[1].resume()
    assert sessions[1].wait(timeout=60) is SessionState.FINISHED
    assert [s.output_ids for s in sessions] == alone
    assert_consistent(sessions[1])


def test_a_pause_inside_the_batched_pass_drops_only_that_row(engine: DecodeEngine) -> None:
    alone = [_alone(engine, p, max_new_tokens=20, sampler=_hot(2)) for p in PROMPTS[:2]]
    sessions = [engine.session(p, max_new_tokens=20, sampler=_hot(2)) for p in PROMPTS[:2]]
    target = sessions[0]
    fired = threading.Event()
    base_check = target.layer_check

    def check_pausing() -> Callable[[], None]:
        inner = base_check()
        calls = [0]

        def check() -> None:
            calls[0] += 1
            if target.n_generated == 5 and calls[0] == 3 and not fired.is_set():
                fired.set()
                target.pause(wait=False)
            inner()

        return check

    target.layer_check = check_pausing  # type: ignore[method-assign]  # a test hook
    _together_until_paused(engine, sessions, target)
    assert fired.is_set()
    assert target.state is SessionState.PAUSED
    assert target.last_pause_latency is not None
    assert sessions[1].wait(timeout=60) is SessionState.FINISHED
    assert target.kv_length == len(target)  # the partial pass was cropped back
    target.resume()
    assert target.wait(timeout=60) is SessionState.FINISHED
    assert [s.output_ids for s in sessions] == alone
    assert_consistent(target)


def _together_until_paused(
    engine: DecodeEngine, sessions: list[DecodeSession], target: DecodeSession
) -> None:
    for s in sessions:
        engine.submit(s)
    deadline = time.monotonic() + 60
    while target.state is not SessionState.PAUSED and time.monotonic() < deadline:
        time.sleep(0.002)


def test_a_cancelled_session_leaves_without_changing_the_others(engine: DecodeEngine) -> None:
    alone = _alone(engine, PROMPTS[0], max_new_tokens=30, sampler=_hot(3))
    keep = engine.session(PROMPTS[0], max_new_tokens=30, sampler=_hot(3))
    gone = engine.session(PROMPTS[1], max_new_tokens=10_000, min_new_tokens=10_000)
    engine.submit(gone)
    engine.submit(keep)
    while keep.n_generated < 3:
        time.sleep(0.001)
    gone.cancel("aborted")
    assert gone.wait(timeout=30) is SessionState.FINISHED
    assert gone.finish_reason == "aborted"
    assert keep.wait(timeout=60) is SessionState.FINISHED
    assert keep.output_ids == alone


@dataclass
class _Budget:
    """A meter that refuses the token after ``limit``."""

    limit: int
    out: int = 0
    max_out: int | None = None

    def ensure(
        self,
        tokens_in: int = 0,
        tokens_out: int = 0,
        *,
        interrupted: Callable[[], bool] | None = None,
    ) -> bool:
        self.check(tokens_in, tokens_out)
        return True

    def check(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        if self.out + tokens_out > self.limit:
            msg = f"budget of {self.limit} tokens spent"
            raise BudgetExceededError(msg)

    def charge(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        self.out += tokens_out


def test_a_refused_budget_finishes_one_session_with_its_error(engine: DecodeEngine) -> None:
    alone = _alone(engine, PROMPTS[0], max_new_tokens=25, sampler=_hot(4))
    poor = engine.session(PROMPTS[1], max_new_tokens=25, meter=_Budget(4), sampler=_hot(4))
    rich = engine.session(PROMPTS[0], max_new_tokens=25, sampler=_hot(4))
    _together(engine, [poor, rich])
    assert isinstance(poor.error, BudgetExceededError)
    assert poor.n_generated == 4
    assert rich.output_ids == alone
    assert rich.error is None


def test_a_deadline_passed_inside_the_batch_fails_that_session(engine: DecodeEngine) -> None:
    late = engine.session(PROMPTS[1], max_new_tokens=10_000, min_new_tokens=10_000)
    other = engine.session(PROMPTS[0], max_new_tokens=25)
    late.deadline = time.monotonic() + 0.3
    _together(engine, [late, other])
    assert isinstance(late.error, TierTimeoutError)
    assert other.finish_reason in {"eos", "length"}


@dataclass
class _Fake:
    priority: int
    workflow_id: str | None
    name: str


def test_batches_take_the_most_urgent_and_share_slots_between_workflows() -> None:
    burst = [_Fake(0, "burst", f"b{i}") for i in range(6)]
    other = [_Fake(0, "other", "o0"), _Fake(0, "other", "o1")]
    urgent = _Fake(1, "urgent", "u")
    chosen = pick_batch([*burst, *other], {}, 4)
    assert [s.name for s in chosen] == ["b0", "o0", "b1", "o1"]
    served: dict[str | None, int] = {"burst": 100, "other": 3}
    chosen = pick_batch([*burst, *other], served, 3)
    assert [s.name for s in chosen] == ["o0", "b0", "o1"]
    assert pick_batch([*burst, urgent], {}, 4) == [urgent]


@pytest.mark.parametrize("limit", [1, 2])
def test_max_batch_bounds_the_sessions_per_pass(engine: DecodeEngine, limit: int) -> None:
    engine.max_batch = limit
    sessions = [engine.session(p, max_new_tokens=8) for p in PROMPTS]
    _together(engine, sessions)
    assert engine.largest_batch == (0 if limit == 1 else 2)


@pytest.mark.model
def test_batched_greedy_outputs_of_the_real_model_equal_each_alone(
    real_engine: DecodeEngine,
) -> None:
    prompts = [*PROMPTS, "Name a colour.", "Write a haiku about rain."]
    alone = [_alone(real_engine, p, max_new_tokens=24) for p in prompts]
    sessions = [real_engine.session(p, max_new_tokens=24) for p in prompts]
    _together(real_engine, sessions)
    assert real_engine.largest_batch == len(prompts)
    assert [s.output_ids for s in sessions] == alone


class _SlowRoom:
    """A lease-like meter whose room comes only once ``room`` is set (it waits, as a budget
    lease waits for requests in flight to settle)."""

    max_out = 1 << 30

    def __init__(self) -> None:
        self.room = threading.Event()
        self.waits = 0

    def ensure(
        self,
        tokens_in: int = 0,
        tokens_out: int = 0,
        *,
        interrupted: Callable[[], bool] | None = None,
    ) -> bool:
        while not self.room.wait(0.005):
            self.waits += 1
            if interrupted is not None and interrupted():
                return False
        return True

    def check(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        self.ensure(tokens_in, tokens_out)

    def charge(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        pass


def test_a_session_waiting_for_budget_room_does_not_stall_the_batch(
    engine: DecodeEngine,
) -> None:
    alone = [_alone(engine, p, max_new_tokens=20, sampler=_hot(5)) for p in PROMPTS[:2]]
    meter = _SlowRoom()
    starved = engine.session(PROMPTS[0], max_new_tokens=20, sampler=_hot(5), meter=meter)
    other = engine.session(PROMPTS[1], max_new_tokens=20, sampler=_hot(5))
    engine.submit(starved)  # first: the batch meets it before the other
    _together(engine, [other])
    assert starved.n_generated == 0 and starved.state is SessionState.RUNNING
    meter.room.set()
    assert starved.wait(timeout=60) is SessionState.FINISHED
    assert [starved.output_ids, other.output_ids] == alone
    assert meter.waits > 0


def test_a_dynamically_quantised_layer_computes_each_row_as_if_alone() -> None:
    import torch
    from coreason_runtime.models._fast import rowwise
    from coreason_runtime.models._formats import Int4Linear, Int8Linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96, bias=False)
    x = torch.randn(6, 64)
    x[0] *= 50  # one loud row: a scale shared over the batch would coarsen the others
    int8 = Int8Linear(lin)
    alone = torch.cat([int8(x[i : i + 1]) for i in range(6)])
    assert not torch.equal(int8(x), alone)  # one call scales the whole batch
    assert torch.equal(rowwise(int8, x), alone)
    int4 = Int4Linear(lin)  # weight-only: rows are independent, one call for the batch
    assert torch.equal(rowwise(int4, x), torch.cat([int4(x[i : i + 1]) for i in range(6)]))


@pytest.mark.model
def test_batched_greedy_outputs_under_the_precision_map_equal_each_alone() -> None:
    import torch
    from coreason_runtime import EventBus
    from coreason_runtime.models import load_model

    from tests._fixtures.serve import shared_model_cache

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    loaded = load_model(device="cpu", cache_dir=shared_model_cache())
    engine = DecodeEngine(loaded.model, loaded.tokenizer, bus=EventBus())
    try:
        prompts = [*PROMPTS, "Name a colour.", "Write a haiku about rain."]
        alone = [_alone(engine, p, max_new_tokens=24) for p in prompts]
        sessions = [engine.session(p, max_new_tokens=24) for p in prompts]
        _together(engine, sessions)
        assert engine.largest_batch == len(prompts)
        assert [s.output_ids for s in sessions] == alone
    finally:
        engine.close()
        torch.set_num_threads(threads)


def test_a_full_engine_refuses_a_session_with_a_typed_error(engine: DecodeEngine) -> None:
    from coreason_runtime._exceptions import ServerBusyError

    engine.max_sessions = 2
    held = [engine.session(p, max_new_tokens=8, sampler=_hot(6)) for p in PROMPTS[:2]]
    for s in held:
        s.pause(wait=False)  # parked: queued on the engine, not decoding
        engine.submit(s, paused_ok=True)
    extra = engine.session(PROMPTS[2], max_new_tokens=8)
    with pytest.raises(ServerBusyError, match="full") as info:
        engine.submit(extra)
    assert info.value.retryable
    assert extra.state is SessionState.CREATED  # nothing was queued
    held[0].cancel()
    assert held[0].wait(timeout=10) is SessionState.FINISHED
    _together(engine, [extra])  # room again once one has left


def test_a_grammar_dead_end_finishes_one_session_and_not_the_others(
    engine: DecodeEngine,
) -> None:
    from coreason_runtime._exceptions import GrammarDeadEndError

    alone = _alone(engine, PROMPTS[0], max_new_tokens=20, sampler=_hot(7))
    doomed = engine.session(PROMPTS[1], max_new_tokens=20, grammar=JSON_GRAMMAR)
    fine = engine.session(PROMPTS[0], max_new_tokens=20, sampler=_hot(7))
    mask = doomed.grammar
    assert mask is not None
    apply = mask.apply

    def dead_end_after_three(logits: torch.Tensor) -> torch.Tensor:
        if doomed.n_generated >= 3:  # as when no token the model has fits the grammar
            msg = "the grammar allows no token here"
            raise GrammarDeadEndError(msg)
        return apply(logits)

    mask.apply = dead_end_after_three  # type: ignore[method-assign]  # a test hook
    _together(engine, [doomed, fine])
    assert isinstance(doomed.error, GrammarDeadEndError)
    assert doomed.n_generated == 3
    assert fine.output_ids == alone
    assert_consistent(fine)

"""Tiered KV on real decode sessions (a tiny Llama): demote on pause, exact restore, the prefix
cache over the disk tier surviving a new store, edits and span repair on a demoted KV."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from coreason_runtime import EventBus, EventType
from coreason_runtime._exceptions import SessionStateError
from coreason_runtime.decode import (
    BlockStore,
    DecodeEngine,
    DemandExecutor,
    KVSpace,
    Sampler,
    expander,
    repair_span,
)
from coreason_runtime.events import KVFault, KVMiss, KVRead
from coreason_runtime.tensor._prefix import PrefixCache
from transformers import DynamicCache

from tests.runtime.decode.conftest import assert_consistent

HOT = Sampler(temperature=1.0, seed=7)
PROMPT = "Count the primes below fifty, one per line:"


def tiny_store(
    engine: DecodeEngine, root: Path | None, bus: EventBus, **options: Any
) -> BlockStore:
    space = KVSpace.of(engine.model, engine.tokenizer, name="tiny", revision="0", block_tokens=8)
    return BlockStore(space, root=root, bus=bus, **options)


def reference(engine: DecodeEngine, steps: int = 24) -> list[int]:
    ref = engine.session(PROMPT, max_new_tokens=steps, sampler=HOT)
    ref.run()
    return ref.tokens


def test_a_paused_session_hands_its_kv_to_the_store_and_resumes_with_the_same_tokens(
    engine: DecodeEngine, bus: EventBus, tmp_path: Path
) -> None:
    want = reference(engine)
    store = tiny_store(engine, tmp_path, bus, ram_tokens=0)
    s = engine.session(PROMPT, max_new_tokens=24, sampler=HOT, kv=store)
    s.run(max_steps=6)
    s.pause()  # parks on this thread: the KV goes to the store at once
    assert s.demoted and s.cache.get_seq_length() == 0
    assert store.flush()
    assert store.tiers()["ram"] == 0 and store.stats().pinned > 0  # on disk only
    s.resume()
    s.run()
    assert s.tokens == want
    assert_consistent(s)
    assert store.stats().pinned == 0
    read = [e.data for e in bus.history([EventType.KV_READ])]
    assert any(isinstance(r, KVRead) and r.reason == "resume" and r.misses > 0 for r in read)


def test_demoting_a_session_that_is_not_paused_is_refused(
    engine: DecodeEngine, bus: EventBus
) -> None:
    s = engine.session(PROMPT, max_new_tokens=8, kv=tiny_store(engine, None, bus))
    s.run(max_steps=2)
    with pytest.raises(SessionStateError):
        s.demote()


def test_a_store_that_does_not_demote_on_pause_leaves_the_kv_until_asked(
    engine: DecodeEngine, bus: EventBus
) -> None:
    store = tiny_store(engine, None, bus, demote_on_pause=False)
    s = engine.session(PROMPT, max_new_tokens=12, sampler=HOT, kv=store)
    s.run(max_steps=4)
    s.pause()
    assert not s.demoted
    kept = s.kv_length
    assert s.demote() == kept and s.demoted
    assert s.prefetch() == 0  # in RAM already: nothing to read
    s.resume()
    s.run()
    assert_consistent(s)


def test_blocks_lost_while_demoted_are_recomputed_and_the_tokens_do_not_change(
    engine: DecodeEngine, bus: EventBus, tmp_path: Path
) -> None:
    want = reference(engine)
    store = tiny_store(engine, tmp_path, bus, ram_tokens=0)
    s = engine.session(PROMPT, max_new_tokens=24, sampler=HOT, kv=store)
    s.run(max_steps=6)
    s.pause()
    assert store.flush()
    shutil.rmtree(tmp_path)  # the cache folder deleted mid-run
    s.resume()
    s.run()
    assert s.tokens == want
    assert_consistent(s)
    miss = bus.history([EventType.KV_MISS])[-1].data
    assert isinstance(miss, KVMiss) and miss.recomputed > 0


def test_a_corrupt_block_of_a_demoted_session_is_dropped_and_recomputed(
    engine: DecodeEngine, bus: EventBus, tmp_path: Path
) -> None:
    want = reference(engine)
    store = tiny_store(engine, tmp_path, bus, ram_tokens=0)
    s = engine.session(PROMPT, max_new_tokens=24, sampler=HOT, kv=store)
    s.run(max_steps=6)
    s.pause()
    assert store.flush()
    victim = sorted(tmp_path.rglob("*.kvb"))[0]
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF
    victim.write_bytes(bytes(data))
    s.resume()
    s.run()
    assert s.tokens == want
    assert_consistent(s)
    faults = [e.data for e in bus.history([EventType.KV_FAULT])]
    assert any(isinstance(f, KVFault) and f.reason == "checksum" for f in faults)


def test_an_edit_takes_a_demoted_kv_back_and_span_repair_works_unchanged(
    engine: DecodeEngine, bus: EventBus, tmp_path: Path
) -> None:
    store = tiny_store(engine, tmp_path, bus, ram_tokens=0)
    s = engine.session(PROMPT, max_new_tokens=16, sampler=HOT, kv=store)
    s.run(max_steps=10)
    s.pause()
    assert s.demoted
    start = s.prompt_len + 2
    repair_span(s, start, start + 3, replacement=" 2, 3")
    assert not s.demoted
    assert_consistent(s)
    s.pause()
    s.inject(" [tool: 42]")
    assert_consistent(s)


def test_the_prefix_cache_reuses_a_prompt_from_disk_in_a_new_store(
    engine: DecodeEngine, bus: EventBus, tmp_path: Path
) -> None:
    system = engine.chat_ids("Differentiate x^3 + 2x and explain every step in words.")
    first = tiny_store(engine, tmp_path, bus)
    done = engine.generate(system, max_new_tokens=6, kv=first)
    PrefixCache(store=first).store(done.tokens[: done.kv_length], done.cache)
    first.close()  # the kernel ends; its blocks stay on disk

    restarted = tiny_store(engine, tmp_path, bus, warm=False)
    follow_up = [*done.tokens, *engine.encode(" And now x^4?")]
    cache, reused = PrefixCache(store=restarted).lookup(follow_up, engine.model.config)
    assert reused == done.kv_length
    s = engine.session(follow_up, max_new_tokens=8, sampler=HOT, prefix=(cache, reused))
    s.run()
    cold = engine.session(follow_up, max_new_tokens=8, sampler=HOT)
    cold.run()
    assert s.tokens == cold.tokens
    assert_consistent(s)
    read = bus.history([EventType.KV_READ])[-1].data
    assert isinstance(read, KVRead) and read.reason == "prefix" and read.misses > 0


def test_blocks_of_another_model_or_tokenizer_are_never_reused(
    engine: DecodeEngine, bus: EventBus, tmp_path: Path
) -> None:
    ids = engine.chat_ids("Integrate sin(x) from 0 to pi.")
    first = tiny_store(engine, tmp_path, bus)
    done = engine.generate(ids, max_new_tokens=4, kv=first)
    first.put(done.tokens[: done.kv_length], done.cache)
    first.close()
    space = KVSpace.of(engine.model, engine.tokenizer, name="tiny", revision="0", block_tokens=8)
    for other in (
        KVSpace(**{**space.__dict__, "model": "another"}),
        KVSpace(**{**space.__dict__, "tokenizer": "0" * 16}),
    ):
        store = BlockStore(other, root=tmp_path, bus=bus, warm=False)
        assert store.lookup(done.tokens, DynamicCache()) == 0


def test_two_sessions_with_one_prompt_share_the_blocks(engine: DecodeEngine, bus: EventBus) -> None:
    store = tiny_store(engine, None, bus)
    a = engine.session(PROMPT, max_new_tokens=6, sampler=HOT, kv=store)
    b = engine.session(PROMPT, max_new_tokens=6, sampler=Sampler(temperature=1.0, seed=8), kv=store)
    a.run(max_steps=3)
    b.run(max_steps=3)
    a.pause()
    before = store.stats().blocks["ram"]
    b.pause()
    shared = a.prompt_len // 8  # whole prompt blocks are the same content
    assert store.stats().blocks["ram"] <= 2 * before - shared
    for s in (a, b):
        s.resume()
        s.run()
        assert_consistent(s)


def test_a_thunk_forced_on_a_demoted_session_splices_into_the_restored_kv(
    engine: DecodeEngine, bus: EventBus, tmp_path: Path
) -> None:
    store = tiny_store(engine, tmp_path, bus, ram_tokens=0)
    s = engine.session("Work:", max_new_tokens=4, kv=store)
    s.run(max_steps=1)
    s.pause()
    s.inject("a = ⟦da(x^3)⟧\nThe answer uses da.\n")
    s.demote()
    assert s.demoted and store.flush()
    ex = DemandExecutor(s, default=expander(lambda thunk, context: "3x^2"))
    assert ex.resolve() == ["da"]
    assert not s.demoted and "a = 3x^2\n" in s.output_text
    assert_consistent(s)


def test_a_demoted_session_frees_its_cache_memory(engine: DecodeEngine, bus: EventBus) -> None:
    import gc
    import weakref

    s = engine.session(PROMPT, max_new_tokens=12, sampler=HOT, kv=tiny_store(engine, None, bus))
    s.run(max_steps=4)
    keys = s.cache.layers[0].keys
    storage = weakref.ref(keys if keys._base is None else keys._base)
    del keys
    s.pause()
    gc.collect()
    assert s.demoted and storage() is None  # neither the tensors nor a growth buffer remain
    s.resume()
    s.run()
    assert_consistent(s)

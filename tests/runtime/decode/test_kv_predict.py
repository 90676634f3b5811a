"""The predictor learns, while the store runs, which chain is read after which, prefetches the
likeliest next one from disk into free RAM, and the next read scores the guess (kv.predicted)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from coreason_runtime import EventBus, EventType
from coreason_runtime.decode import BlockStore
from coreason_runtime.decode._blocks import chain_of
from coreason_runtime.decode._prefetch import Predictor
from coreason_runtime.events import KVMoved, KVPredicted, KVRead

from tests.runtime.decode._kv_helpers import cache_kv, disk_store, empty_cache, toy_cache, toy_kv

P = list(range(1, 23))  # 22 tokens: six blocks of 4 (the last one of 2)
Q = [100 + i for i in range(22)]
R = [300 + i for i in range(22)]


def on_disk_only(tmp_path: Path, bus: EventBus) -> BlockStore:
    """A store whose every chain (P, Q, R) is on disk and none in RAM."""
    store = disk_store(tmp_path, bus, warm=False)
    for tokens in (P, Q, R):
        store.put(tokens, toy_cache(tokens))
    assert store.flush()
    store.clear()
    assert store.stats().blocks["ram"] == 0
    return store


def read(store: BlockStore, bus: EventBus, tokens: list[int]) -> KVRead:
    """Restore ``tokens`` (checked exact) and return the read's ``kv.read`` event."""
    cache = empty_cache()
    assert store.lookup(tokens, cache) == len(tokens)
    assert torch.equal(cache_kv(cache), toy_kv(tokens))
    data = bus.history([EventType.KV_READ])[-1].data
    assert isinstance(data, KVRead)
    return data


def predicted_promotion(bus: EventBus) -> threading.Event:
    done = threading.Event()

    def seen(event: Any) -> None:
        if isinstance(event.data, KVMoved) and event.data.reason == "predicted":
            done.set()

    bus.subscribe(seen, EventType.KV_PROMOTED)
    return done


def last_prediction(bus: EventBus) -> KVPredicted:
    data = bus.history([EventType.KV_PREDICTED])[-1].data
    assert isinstance(data, KVPredicted)
    return data


def test_a_chain_read_after_another_is_prefetched_the_next_time_and_read_as_a_hit(
    tmp_path: Path,
) -> None:
    bus = EventBus()
    store = on_disk_only(tmp_path, bus)
    read(store, bus, P)
    assert read(store, bus, Q).misses == 6  # nothing learnt yet: Q came from disk
    store.clear()
    promoted = predicted_promotion(bus)
    assert read(store, bus, P).misses == 6  # P, then (learnt) Q is prefetched meanwhile
    assert promoted.wait(10)
    got = read(store, bus, Q)
    assert (got.hits, got.misses, got.wait_ms) == (6, 0, 0.0)
    scored = last_prediction(bus)
    assert (scored.hits, scored.late, scored.wasted) == (6, 0, 0)
    stats = store.stats()
    assert (stats.predicted_hits, stats.predicted_late, stats.predicted_wasted) == (6, 0, 0)
    store.close()


def test_a_wrong_guess_costs_a_metered_miss_and_evicts_nothing(tmp_path: Path) -> None:
    bus = EventBus()
    store = on_disk_only(tmp_path, bus)
    read(store, bus, P)
    read(store, bus, Q)  # learnt: Q follows P
    store.clear()
    store.ram_tokens_cap = len(P) + 4  # after P, room for one more block of 4 tokens
    promoted = predicted_promotion(bus)
    demoted_before = len(bus.history([EventType.KV_DEMOTED]))
    read(store, bus, P)
    assert promoted.wait(10)
    moved = bus.history([EventType.KV_PROMOTED])[-1].data
    assert isinstance(moved, KVMoved) and moved.blocks == 1  # the guess fit the free room
    assert store.stats().blocks["ram"] == 7 and store.ram_tokens <= len(P) + 4
    assert len(bus.history([EventType.KV_DEMOTED])) == demoted_before  # nothing pushed out
    got = read(store, bus, R)  # the guess was wrong: R is read as without a predictor
    assert (got.hits, got.misses) == (0, 6)
    scored = last_prediction(bus)
    assert (scored.hits, scored.late, scored.wasted) == (0, 0, 1)
    assert scored.bytes > 0
    assert store.stats().predicted_wasted == 1
    store.close()


def test_a_guess_still_on_its_way_is_waited_for_and_the_wait_is_metered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = EventBus()
    store = on_disk_only(tmp_path, bus)
    read(store, bus, P)
    read(store, bus, Q)
    store.clear()
    assert store.disk is not None
    slow = {ref.digest for ref in chain_of(Q, store.block_tokens)}
    gate = threading.Event()
    real_read = store.disk.read

    def gated_read(ref: Any, layer: int, *, pin: bool = False) -> torch.Tensor:
        if ref.digest in slow:
            gate.wait(10)
        return real_read(ref, layer, pin=pin)

    monkeypatch.setattr(store.disk, "read", gated_read)
    read(store, bus, P)  # Q's prefetch starts and is held at the gate
    timer = threading.Timer(0.2, gate.set)
    timer.start()
    got = read(store, bus, Q)  # joins the reads in flight instead of starting new ones
    timer.join()
    scored = last_prediction(bus)
    assert (scored.hits + scored.late, scored.wasted) == (6, 0) and scored.late >= 1
    assert scored.wait_ms >= 100 and got.wait_ms >= scored.wait_ms
    store.close()


def test_the_learnt_transitions_survive_a_restart(tmp_path: Path) -> None:
    p = [r.digest for r in chain_of(P, 4)]
    q = [r.digest for r in chain_of(Q, 4)]
    path = tmp_path / "predictor.json"
    first = Predictor(path)
    for chain in (p, q):
        first.record(chain)
    assert first.follow(p) == [] and first.follow(q) == []
    first.save()
    restarted = Predictor(path)
    restarted.follow(q)  # the stream goes on: q was read, then p
    assert restarted.follow(p) == [q]


def test_a_rare_successor_is_not_predicted() -> None:
    chains = {name: [bytes([i]) * 16] for i, name in enumerate("abcd", start=1)}
    predictor = Predictor(min_share=0.3)
    for c in chains.values():
        predictor.record(c)
    for nxt in "bbbbbbbc":  # after a: b seven times, c once
        predictor.follow(chains["a"])
        predictor.follow(chains[nxt])
    assert predictor.follow(chains["a"]) == [chains["b"]]

"""The local tier over a KV block store: a paused request's KV waits in the store (on disk),
and a new tier on the same folder (a restarted kernel) reuses a prompt's prefix from disk."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from coreason_runtime import Controls, EventBus, EventType
from coreason_runtime.decode import BlockStore, KVSpace
from coreason_runtime.events import KVRead, PrefixReused
from coreason_runtime.models import LoadedModel
from coreason_runtime.tensor._local import LocalTier

SYSTEM = "You are a careful assistant. Answer in one short sentence. " * 6


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def store_for(model: LoadedModel, root: Path, bus: EventBus, **options: Any) -> BlockStore:
    space = KVSpace.of(model.model, model.tokenizer, name="tiny", revision="0", block_tokens=16)
    return BlockStore(space, root=root, bus=bus, **options)


def answer(tier: LocalTier, question: str = "What is 2+2?", **kw: Any) -> str:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return tier.complete_text(messages, 24, ignore_eos=True, workflow_id="wf-kv", **kw).text


def test_a_paused_request_holds_its_kv_in_the_store_and_answers_the_same(
    tiny_model: LoadedModel, tmp_path: Path
) -> None:
    ref = answer(LocalTier(tiny_model))
    bus = EventBus()
    controls = Controls(bus)
    store = store_for(tiny_model, tmp_path, bus, ram_tokens=0)
    tier = LocalTier(tiny_model, bus=bus, kv=store, stream_every=1)
    paused = threading.Event()
    bus.subscribe(lambda e: paused.set(), EventType.DECODE_PAUSED)
    deltas = [0]

    def pause_after_a_few_tokens(text: str) -> None:
        deltas[0] += 1
        if deltas[0] == 4:
            controls.pause("wf-kv")

    out: list[Any] = []
    with controls.scope("wf-kv") as ticket:
        worker = threading.Thread(
            target=lambda: out.append(
                answer(tier, ticket=ticket, on_delta=pause_after_a_few_tokens)
            )
        )
        worker.start()
        try:
            assert paused.wait(30)
            deadline = time.monotonic() + 30
            while store.stats().pinned == 0 and time.monotonic() < deadline:
                time.sleep(0.01)  # the worker thread hands the KV over once parked
            assert store.stats().pinned > 0
            assert store.flush()
            assert store.tiers()["ram"] == 0 and store.tiers()["disk"] > 0
        finally:
            controls.resume("wf-kv")
            worker.join(60)
    assert out[0] == ref
    reads = [e.data for e in bus.history([EventType.KV_READ])]
    assert any(isinstance(r, KVRead) and r.reason == "resume" for r in reads)


def test_a_new_tier_on_the_same_folder_reuses_the_system_prompt_from_disk(
    tiny_model: LoadedModel, tmp_path: Path
) -> None:
    first_bus = EventBus()
    first = LocalTier(tiny_model, bus=first_bus, kv=store_for(tiny_model, tmp_path, first_bus))
    answer(first, "Name a prime.")
    first.kv.close()  # the kernel ends

    bus = EventBus()
    restarted = LocalTier(tiny_model, bus=bus, kv=store_for(tiny_model, tmp_path, bus))
    out = answer(restarted, "Name a square.")
    reused = [e.data for e in bus.history([EventType.PREFIX_REUSED])]
    assert reused and isinstance(reused[-1], PrefixReused) and reused[-1].reused >= 64
    assert out == answer(LocalTier(tiny_model), "Name a square.")

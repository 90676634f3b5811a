"""The KV block store: content addresses, exact restores, tiers, eviction order, prefetch."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from coreason_runtime import EventBus, EventType
from coreason_runtime._exceptions import ConfigurationError
from coreason_runtime.decode import BlockStore
from coreason_runtime.decode._blocks import chain_of
from coreason_runtime.events import KVMiss, KVMoved, KVRead

from tests.runtime.decode._kv_helpers import (
    DIM,
    HEADS,
    LAYERS,
    cache_kv,
    disk_store,
    empty_cache,
    toy_cache,
    toy_kv,
    toy_space,
)

A = list(range(1, 23))  # 22 tokens: five full blocks of 4 and a partial one of 2


# --- addresses -----------------------------------------------------------------------------


def test_equal_prefixes_share_blocks_and_a_divergence_changes_every_later_one() -> None:
    b = [*A[:9], 99, *A[10:]]
    ca, cb = chain_of(A, 4), chain_of(b, 4)
    assert [r.digest for r in ca[:2]] == [r.digest for r in cb[:2]]
    assert all(x.digest != y.digest for x, y in zip(ca[2:], cb[2:], strict=True))
    assert [len(r.tokens) for r in ca] == [4, 4, 4, 4, 4, 2]
    assert [r.start for r in ca] == [0, 4, 8, 12, 16, 20]


def test_a_space_changes_with_the_model_weights_tokenizer_or_dtype() -> None:
    base = toy_space()
    others = [
        toy_space(model="other"),
        toy_space(revision="r2"),
        toy_space(tokenizer="tok2"),
        toy_space(dtype="bfloat16"),
        toy_space(precision="int8-matmul"),
    ]
    assert len({base.id, *(o.id for o in others)}) == 1 + len(others)
    assert toy_space().id == base.id


def test_a_disk_tier_needs_a_space(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        BlockStore(root=tmp_path)


# --- restores ------------------------------------------------------------------------------


def test_a_lookup_restores_exactly_the_stored_prefix() -> None:
    store = BlockStore(ram_tokens=100)
    store.put(A, toy_cache(A))
    prompt = [*A[:13], 7, 7]
    cache = empty_cache()
    assert store.lookup(prompt, cache, limit=len(prompt) - 1) == 13
    assert torch.equal(cache_kv(cache), toy_kv(A[:13]))


def test_the_last_block_matches_token_by_token() -> None:
    store = BlockStore(ram_tokens=100)
    store.put(A, toy_cache(A))
    prompt = [*A[:10], 50, 51]  # diverges inside the third block
    cache = empty_cache()
    assert store.lookup(prompt, cache) == 10
    assert torch.equal(cache_kv(cache), toy_kv(A[:10]))


def test_a_restored_cache_never_shares_memory_with_the_stored_blocks() -> None:
    store = BlockStore(ram_tokens=100)
    store.put(A[:4], toy_cache(A[:4]))
    cache = empty_cache()
    store.lookup(A[:4], cache)
    cache.layers[0].keys.zero_()
    again = empty_cache()
    store.lookup(A[:4], again)
    assert torch.equal(cache_kv(again), toy_kv(A[:4]))


def test_a_growing_cache_takes_the_blocks_in_place_and_appends_without_copying_them() -> None:
    from coreason_runtime.decode._kv import new_cache
    from transformers import LlamaConfig

    config = LlamaConfig(
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        hidden_size=HEADS * DIM,
        vocab_size=16,
    )
    store = BlockStore(ram_tokens=100)
    store.put(A, toy_cache(A))
    cache = new_cache(config)
    assert store.lookup(A, cache, limit=14) == 14  # three blocks and half of the fourth
    assert torch.equal(cache_kv(cache), toy_kv(A[:14]))
    full = toy_kv(A)
    start = [layer.keys.data_ptr() for layer in cache.layers]
    for n in (14, 15):  # the question's tokens, then a decoded one
        for i, layer in enumerate(cache.layers):
            layer.update(full[i, 0:1, :, n : n + 1].clone(), full[i, 1:2, :, n : n + 1].clone())
    assert torch.equal(cache_kv(cache), toy_kv(A[:16]))
    assert [layer.keys.data_ptr() for layer in cache.layers] == start  # appended in place
    cache.layers[0].keys.zero_()  # the cache's buffer is its own, not a stored block
    again = empty_cache()
    store.lookup(A, again)
    assert torch.equal(cache_kv(again), toy_kv(A))


def test_nothing_stored_reuses_nothing() -> None:
    store = BlockStore(ram_tokens=100)
    assert store.lookup(A, empty_cache()) == 0
    store.put(A, toy_cache(A))
    assert store.lookup([5, *A], empty_cache()) == 0


# --- RAM capacity and its eviction order ---------------------------------------------------


def test_ram_keeps_within_its_token_capacity_least_recently_used_first() -> None:
    store = BlockStore(ram_tokens=16)
    first, second, third = [1] * 8, [2] * 8, [3] * 8
    store.put(first, toy_cache(first))
    store.put(second, toy_cache(second))
    assert store.lookup([*first, 0], empty_cache()) == 8  # touches the first
    store.put(third, toy_cache(third))
    assert store.ram_tokens <= 16
    assert store.lookup([*second, 0], empty_cache()) == 0
    assert store.lookup([*first, 0], empty_cache()) == 8


def test_a_paused_sessions_blocks_leave_ram_first_and_recurring_ones_last() -> None:
    store = BlockStore(ram_tokens=12)
    system, other, paused = [9] * 4, [8] * 4, [7] * 4
    store.put(system, toy_cache(system))
    for _ in range(2):  # read by two requests: a recurring prefix
        store.lookup([*system, 1], empty_cache())
    store.put(other, toy_cache(other))

    class Owner:
        pass

    owner = Owner()
    held = store.hold(paused, toy_cache(paused), owner)  # most recent, yet first to go
    store.put([6] * 4, toy_cache([6] * 4))
    assert store.lookup([*system, 1], empty_cache()) == 4
    assert store.lookup([*other, 1], empty_cache()) == 4
    assert store.restore_held(held, empty_cache()) == 0  # no disk tier: it was dropped


def test_held_blocks_go_to_disk_under_pressure_and_come_back_exact(tmp_path: Path) -> None:
    bus = EventBus()
    store = disk_store(tmp_path, bus, ram_tokens=0, write_through=False)

    class Owner:
        pass

    owner = Owner()
    held = store.hold(A, toy_cache(A), owner)
    assert store.flush()
    assert store.tiers()["ram"] == 0 and store.stats().pinned == len(held.refs)
    cache = empty_cache()
    assert store.restore_held(held, cache) == len(A)
    assert torch.equal(cache_kv(cache), toy_kv(A))
    assert store.stats().pinned == 0
    read = bus.history([EventType.KV_READ])[-1].data
    assert isinstance(read, KVRead) and read.misses == len(held.refs) and read.hits == 0
    miss = bus.history([EventType.KV_MISS])[-1].data
    assert isinstance(miss, KVMiss) and miss.recomputed == 0 and miss.wait_ms >= 0


def test_an_owner_dropped_without_resuming_releases_its_pins() -> None:
    store = BlockStore(toy_space(), ram_tokens=100)

    class Owner:
        pass

    owner = Owner()
    store.hold(A, toy_cache(A), owner)
    assert store.stats().pinned == 6
    del owner
    assert store.stats().pinned == 0


# --- the disk tier -------------------------------------------------------------------------


def test_blocks_written_through_are_reused_by_a_new_store_on_the_same_folder(
    tmp_path: Path,
) -> None:
    first = disk_store(tmp_path)
    first.put(A, toy_cache(A))
    first.close()
    bus = EventBus()
    restarted = disk_store(tmp_path, bus, warm=False)
    cache = empty_cache()
    assert restarted.lookup(A, cache, limit=len(A) - 1) == len(A) - 1
    assert torch.equal(cache_kv(cache), toy_kv(A[:-1]))
    read = bus.history([EventType.KV_READ])[-1].data
    assert isinstance(read, KVRead) and read.misses == 6 and read.absent == 0


def test_a_restarted_store_warms_the_likeliest_chain_before_it_is_asked(tmp_path: Path) -> None:
    first = disk_store(tmp_path)
    first.put(A, toy_cache(A))
    first.lookup([*A, 0], empty_cache())
    first.close()
    bus = EventBus()
    warmed = threading.Event()
    bus.subscribe(lambda e: warmed.set(), EventType.KV_PROMOTED)
    restarted = disk_store(tmp_path, bus, ram_tokens=1000)
    assert warmed.wait(10)
    moved = bus.history([EventType.KV_PROMOTED])[-1].data
    assert isinstance(moved, KVMoved) and moved.reason == "warmup" and moved.blocks == 6
    restarted.lookup([*A, 0], empty_cache())
    read = bus.history([EventType.KV_READ])[-1].data
    assert isinstance(read, KVRead) and (read.hits, read.misses) == (6, 0)


def test_a_block_pushed_out_of_ram_comes_back_from_disk(tmp_path: Path) -> None:
    bus = EventBus()
    store = disk_store(tmp_path, bus, ram_tokens=8)
    store.put(A, toy_cache(A))
    assert store.flush()
    assert store.tiers()["ram"] > 0 and store.ram_tokens <= 8
    cache = empty_cache()
    assert store.lookup(A, cache) == len(A)
    assert torch.equal(cache_kv(cache), toy_kv(A))
    assert any(e.data.src == "ram" for e in bus.history([EventType.KV_DEMOTED]))


def test_prefetch_makes_the_next_restore_a_hit(tmp_path: Path) -> None:
    bus = EventBus()
    store = disk_store(tmp_path, bus, ram_tokens=0, write_through=True)
    refs = store.put(A, toy_cache(A))
    assert store.flush()
    store.ram_tokens_cap = 1000
    done = threading.Event()
    bus.subscribe(lambda e: done.set(), EventType.KV_PROMOTED)
    assert store.prefetch(refs) == len(refs)
    assert done.wait(10)
    store.lookup(A, empty_cache())
    read = bus.history([EventType.KV_READ])[-1].data
    assert isinstance(read, KVRead) and read.hits == len(refs)
    assert store.stats().hit_ratio == 1.0


def test_the_disk_tier_removes_least_recently_used_files_beyond_its_capacity(
    tmp_path: Path,
) -> None:
    store = disk_store(tmp_path, ram_tokens=0)
    store.put([1] * 8, toy_cache([1] * 8))  # two blocks
    assert store.flush()
    per_block = store.tiers()["disk"] // 2
    store.disk_bytes_cap = 10 * per_block + per_block // 2
    store.put(A, toy_cache(A))  # six more
    store.put([3] * 40, toy_cache([3] * 40))  # ten more
    assert store.flush()
    assert 0 < store.tiers()["disk"] <= store.disk_bytes_cap
    assert store.lookup([3] * 40, empty_cache()) == 40
    assert store.lookup([*[1] * 8, 0], empty_cache()) == 0  # the oldest went first


def test_concurrent_restores_of_one_chain_all_get_the_exact_kv(tmp_path: Path) -> None:
    writer = disk_store(tmp_path)
    writer.put(A, toy_cache(A))
    writer.close()
    reader = disk_store(tmp_path, ram_tokens=0, warm=False)
    results: list[bool] = []

    def restore() -> None:
        cache = empty_cache()
        n = reader.lookup(A, cache)
        results.append(n == len(A) and torch.equal(cache_kv(cache), toy_kv(A)))

    threads = [threading.Thread(target=restore) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [True] * 6


# --- configuration -------------------------------------------------------------------------


def test_tier_capacities_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from coreason_runtime._config import RuntimeConfig

    monkeypatch.setenv("COREASON_KV_RAM_MB", "1.5")
    monkeypatch.setenv("COREASON_KV_DISK_MB", "none")
    monkeypatch.setenv("COREASON_KV_GPU_MB", "0")
    monkeypatch.setenv("COREASON_KV_BLOCK_TOKENS", "32")
    cfg = RuntimeConfig()
    assert (cfg.kv_ram_bytes, cfg.kv_disk_bytes, cfg.kv_gpu_bytes) == (3 << 19, None, 0)
    assert cfg.kv_block_tokens == 32


@pytest.mark.parametrize("raw", ["lots", "-1", "nan"])
def test_a_bad_tier_capacity_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    from coreason_runtime._config import RuntimeConfig

    monkeypatch.setenv("COREASON_KV_RAM_MB", raw)
    with pytest.raises(ConfigurationError):
        RuntimeConfig()


# --- the GPU tier (CUDA only) --------------------------------------------------------------

CUDA = torch.cuda.is_available()


@pytest.mark.skipif(CUDA, reason="checks the CPU-only fallback")
def test_without_cuda_a_cuda_device_gives_no_gpu_tier(tmp_path: Path) -> None:
    store = disk_store(tmp_path, device="cuda:0", gpu_bytes=None)
    store.put(A, toy_cache(A))
    assert store.tiers()["gpu"] == 0 and store.tiers()["ram"] > 0


@pytest.mark.skipif(not CUDA, reason="the GPU tier needs CUDA; untested on CPU-only machines")
def test_blocks_of_a_cuda_cache_stay_on_the_device_and_come_back_from_disk(
    tmp_path: Path,
) -> None:
    from transformers import DynamicCache

    kv = toy_kv(A).to("cuda:0")
    cache = DynamicCache()
    for layer in range(kv.shape[0]):
        cache.update(kv[layer, 0:1].clone(), kv[layer, 1:2].clone(), layer)
    store = disk_store(tmp_path, device="cuda:0", gpu_bytes=None)
    store.put(A, cache)
    assert store.flush()
    assert store.tiers()["gpu"] > 0 and store.tiers()["disk"] > 0
    store.close()
    restarted = disk_store(tmp_path, device="cuda:0", gpu_bytes=None, warm=False)
    again = empty_cache()
    assert restarted.lookup(A, again) == len(A)
    assert again.layers[0].keys.device.type == "cuda"
    assert torch.equal(cache_kv(again).cpu(), toy_kv(A))


def test_a_precision_map_names_its_own_kv_space() -> None:
    from coreason_runtime.decode._blocks import precision_id

    assert precision_id({}) == ""
    a = precision_id({"model.layers.0.mlp": "bf16"})
    assert a != precision_id({"model.layers.0.mlp": "int8"}) and len(a) == 16
    assert toy_space(precision=a).id != toy_space().id

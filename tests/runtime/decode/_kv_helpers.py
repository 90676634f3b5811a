"""Toy KV caches whose every position depends on its whole token prefix, and a toy space."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from coreason_runtime import EventBus
from coreason_runtime.decode import BlockStore, KVSpace

LAYERS, HEADS, DIM = 2, 1, 4


def toy_space(block_tokens: int = 4, **changes: Any) -> KVSpace:
    fields: dict[str, Any] = {
        "model": "toy",
        "revision": "r1",
        "tokenizer": "tok1",
        "dtype": "float32",
        "layers": LAYERS,
        "kv_heads": HEADS,
        "head_dim": DIM,
        "block_tokens": block_tokens,
    }
    return KVSpace(**{**fields, **changes})


def toy_kv(tokens: Sequence[int]) -> torch.Tensor:
    """``[layers, 2, heads, n, dim]``: position i's KV is a function of ``tokens[: i + 1]``."""
    t = torch.tensor([float(x) for x in tokens], dtype=torch.float64)
    prefix = torch.cumsum(t * torch.arange(1, len(t) + 1, dtype=torch.float64), 0)
    base = (prefix % 1000.0).to(torch.float32)
    out = torch.empty(LAYERS, 2, HEADS, len(tokens), DIM)
    for layer in range(LAYERS):
        for kv in range(2):
            for d in range(DIM):
                out[layer, kv, :, :, d] = base * (1 + layer) * (1 - 2 * kv) + d
    return out


def toy_cache(tokens: Sequence[int]) -> Any:
    from transformers import DynamicCache

    cache = DynamicCache()
    kv = toy_kv(tokens)
    for layer in range(LAYERS):
        cache.update(kv[layer, 0:1].clone(), kv[layer, 1:2].clone(), layer)
    return cache


def cache_kv(cache: Any) -> torch.Tensor:
    return torch.stack(
        [torch.cat([layer.keys[:1], layer.values[:1]]) for layer in list(cache.layers)]
    )


def empty_cache() -> Any:
    from transformers import DynamicCache

    return DynamicCache()


def disk_store(root: Path, bus: EventBus | None = None, **options: Any) -> BlockStore:
    space = options.pop("space", None) or toy_space()
    return BlockStore(space, root=root, bus=bus, **options)

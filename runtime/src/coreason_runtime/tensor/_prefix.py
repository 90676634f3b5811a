"""A bounded LRU of KV caches keyed by token prefix: prompts sharing a prefix skip its prefill."""

from __future__ import annotations

import collections
import threading
from typing import Any

__all__ = ["PrefixCache"]


def _common_prefix(a: tuple[int, ...], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    """Keeps the keys/values of recent token sequences, bounded by the total number of tokens.

    Like RadixAttention without the tree: :meth:`lookup` finds the entry sharing the longest
    prefix with a prompt and returns a fresh ``DynamicCache`` holding that prefix (cropped to
    it), leaving at least one prompt token to prefill so the model yields next-token logits.
    Stored tensors are never mutated: a ``DynamicCache`` grows by concatenation, so reused
    prefixes are copied into the new cache and the entry stays intact.
    """

    def __init__(self, max_tokens: int = 4096) -> None:
        self.max_tokens = max(0, max_tokens)
        self._entries: collections.OrderedDict[tuple[int, ...], list[tuple[Any, Any]]] = (
            collections.OrderedDict()
        )
        self._tokens = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def tokens(self) -> int:
        return self._tokens

    def lookup(self, prompt: list[int], config: Any = None) -> tuple[Any, int]:
        """A new ``DynamicCache`` (for a model with ``config``) and how many leading prompt
        tokens it already holds."""
        from transformers import DynamicCache

        from coreason_runtime.decode._kv import new_cache

        best: tuple[int, ...] | None = None
        best_len = 0
        with self._lock:
            for key in self._entries:
                n = _common_prefix(key, prompt)
                if n > best_len:
                    best, best_len = key, n
            reuse = min(best_len, len(prompt) - 1)
            cache = new_cache(config) if config is not None else DynamicCache()
            if best is None or reuse <= 0:
                self.misses += 1
                return cache, 0
            self._entries.move_to_end(best)
            layers = self._entries[best]
            self.hits += 1
        for i, (k, v) in enumerate(layers):
            cache.update(k[:, :, :reuse, :], v[:, :, :reuse, :], i)
        return cache, reuse

    def store(self, tokens: list[int], cache: Any) -> None:
        """Remember ``cache`` (whose length must equal ``len(tokens)``) under ``tokens``."""
        n = len(tokens)
        if n == 0 or n > self.max_tokens or cache.get_seq_length() != n:
            return
        layers = [
            (layer.keys[:, :, :n, :].clone(), layer.values[:, :, :n, :].clone())
            for layer in cache.layers
        ]
        key = tuple(tokens)
        with self._lock:
            # An entry that is a prefix of the new one is subsumed by it.
            for old in [k for k in self._entries if len(k) <= n and key[: len(k)] == k]:
                self._tokens -= len(old)
                del self._entries[old]
            self._entries[key] = layers
            self._tokens += n
            while self._tokens > self.max_tokens and self._entries:
                old, _ = self._entries.popitem(last=False)
                self._tokens -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._tokens = 0

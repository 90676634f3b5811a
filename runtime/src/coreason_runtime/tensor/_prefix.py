"""The prefix cache: a view of the KV block store keyed by token prefix.

Prompts sharing a prefix with anything the store holds (an earlier request, another
session, another process through the disk tier, yesterday's kernel) skip that much prefill.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from coreason_runtime.decode import BlockStore

__all__ = ["PrefixCache"]


class PrefixCache:
    """Finds the longest stored prefix of a prompt and stores finished sequences, in ``store``.

    Like RadixAttention: whole blocks match by the hash of their prefix, and the last one
    may share only its first tokens with the prompt. :meth:`lookup` returns a fresh
    ``DynamicCache`` holding that prefix, leaving at least one prompt token to prefill so the
    model yields next-token logits. Stored blocks are immutable: a reused prefix is copied
    into the new cache and the blocks stay intact.

    Parameters
    ----------
    max_tokens:
        Without ``store``: the tokens a private, RAM-only store keeps (least recently used
        go first).
    store:
        The block store to view (``rt.kv`` for a runtime: RAM and disk, shared by every
        session and kept across restarts).
    """

    def __init__(self, max_tokens: int = 4096, *, store: BlockStore | None = None) -> None:
        self.max_tokens = max(0, max_tokens)
        self.blocks = store if store is not None else BlockStore(ram_tokens=self.max_tokens)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        """Block groups in RAM."""
        return self.blocks.stats().blocks["ram"]

    @property
    def tokens(self) -> int:
        """Tokens whose KV is in RAM."""
        return self.blocks.ram_tokens

    def lookup(
        self, prompt: Sequence[int], config: Any = None, *, session: str | None = None
    ) -> tuple[Any, int]:
        """A new ``DynamicCache`` (for a model with ``config``) and how many leading prompt
        tokens it already holds."""
        from transformers import DynamicCache

        from coreason_runtime.decode._kv import new_cache

        cache = new_cache(config) if config is not None else DynamicCache()
        reused = self.blocks.lookup(list(prompt), cache, limit=len(prompt) - 1, session=session)
        if reused:
            self.hits += 1
        else:
            self.misses += 1
        return cache, reused

    def store(self, tokens: Sequence[int], cache: Any) -> None:
        """Keep the KV of ``tokens``, which ``cache`` holds from position 0."""
        if tokens and cache.get_seq_length() >= len(tokens):
            self.blocks.put(list(tokens), cache)

    def clear(self) -> None:
        self.blocks.clear()

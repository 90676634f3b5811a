"""KV blocks: runs of a few dozen tokens per layer, addressed by model, layer and token prefix.

A block holds one layer's keys and values for ``block_tokens`` consecutive positions (the last
block of a sequence may be shorter). Its address is the hash of the whole token prefix up to
its end, chained block by block (``digest = H(parent digest, block tokens)``), inside a
:class:`KVSpace` naming the model, weights, tokenizer and dtype. The KV at a position depends
only on the tokens up to it, so equal prefixes share blocks across sessions, requests, kernels
and processes, and a block never changes once written: it is immutable content, independent
of which sequence (or batch) produced it.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache

__all__ = [
    "ROOT",
    "BlockRef",
    "KVSpace",
    "block_digest",
    "block_tensors",
    "chain_of",
    "fill_cache",
    "precision_id",
    "tokenizer_fingerprint",
]

ROOT = bytes(16)  # the parent digest of a sequence's first block
DEFAULT_BLOCK_TOKENS = 64


@dataclass(frozen=True)
class KVSpace:
    """Whose KV a block is: the same token ids under another model, weights revision,
    tokenizer, dtype or precision mode give other keys and values, so blocks never mix."""

    model: str
    revision: str
    tokenizer: str  # tokenizer_fingerprint()
    dtype: str
    layers: int
    kv_heads: int
    head_dim: int
    block_tokens: int = DEFAULT_BLOCK_TOKENS
    precision: str = ""  # a per-operator precision mode, when one changes the KV

    @property
    def id(self) -> str:
        """16 hex digits naming this space (its folder on disk, its files' headers)."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    @classmethod
    def of(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        revision: str,
        block_tokens: int = DEFAULT_BLOCK_TOKENS,
        precision: str = "",
    ) -> KVSpace:
        """The space of a transformers causal LM (Llama-like config) and its tokenizer."""
        cfg = model.config.get_text_config(decoder=True)
        heads = int(cfg.num_attention_heads)
        head_dim = getattr(cfg, "head_dim", None) or int(cfg.hidden_size) // heads
        return cls(
            model=name,
            revision=revision,
            tokenizer=tokenizer_fingerprint(tokenizer),
            dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
            layers=int(cfg.num_hidden_layers),
            kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
            head_dim=int(head_dim),
            block_tokens=block_tokens,
            precision=precision,
        )


def precision_id(modules: dict[str, str]) -> str:
    """16 hex digits naming a precision map's module formats ("" when every module is fp32)."""
    if not modules:
        return ""
    text = json.dumps(sorted(modules.items()))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """16 hex digits over the tokenizer's vocabulary (token -> id) and special tokens."""
    h = hashlib.blake2b(digest_size=8)
    vocab = tokenizer.get_vocab()
    for token, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        h.update(f"{idx}\t{token}\n".encode())
    h.update(json.dumps(tokenizer.all_special_tokens, sort_keys=True).encode())
    return h.hexdigest()


def block_digest(parent: bytes, tokens: Sequence[int]) -> bytes:
    """The address of the block holding ``tokens`` after the prefix addressed by ``parent``."""
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(array("q", tokens).tobytes())
    return h.digest()


@dataclass(frozen=True)
class BlockRef:
    """One block of a token chain: where it starts, its tokens, its and its parent's digest."""

    digest: bytes
    parent: bytes
    start: int
    tokens: tuple[int, ...]

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)

    @property
    def hex(self) -> str:
        return self.digest.hex()


def chain_of(tokens: Sequence[int], block_tokens: int, *, partial: bool = True) -> list[BlockRef]:
    """The blocks of ``tokens``: full blocks, then (with ``partial``) a shorter last one."""
    out: list[BlockRef] = []
    parent = ROOT
    for start in range(0, len(tokens), block_tokens):
        run = tuple(int(t) for t in tokens[start : start + block_tokens])
        if len(run) < block_tokens and not partial:
            break
        digest = block_digest(parent, run)
        out.append(BlockRef(digest, parent, start, run))
        parent = digest
    return out


def block_tensors(cache: DynamicCache, start: int, end: int) -> list[torch.Tensor]:
    """Per layer, a fresh ``[2, kv_heads, end - start, head_dim]`` copy of positions
    ``[start, end)`` (keys, then values); batch row 0."""
    import torch

    layers: list[Any] = list(cache.layers)
    return [
        torch.stack([layer.keys[0, :, start:end], layer.values[0, :, start:end]])
        for layer in layers
    ]


def fill_cache(cache: DynamicCache, layers: Sequence[Sequence[torch.Tensor]], length: int) -> None:
    """Make the empty ``cache`` hold the first ``length`` positions of the blocks given per
    layer (``layers[i]`` is layer i's block tensors in order); one copy per layer. A layer
    that grows in place (the runtime's caches) takes the blocks straight into its buffer,
    with room for the tokens that follow, so its next update does not copy the whole
    restored context again."""
    import torch

    have: list[Any] = list(cache.layers)
    for idx, parts in enumerate(layers):
        if idx < len(have) and hasattr(have[idx], "adopt"):
            have[idx].adopt(parts, length)
            continue
        joined = torch.cat(list(parts), dim=2) if len(parts) > 1 else parts[0]
        joined = joined[:, :, :length]
        if len(parts) == 1:
            joined = joined.clone()  # never hand out a view of a stored block
        keys, values = joined[0:1], joined[1:2]
        if idx < len(have):
            have[idx].lazy_initialization(keys, values)
            have[idx].keys, have[idx].values = keys, values
        else:
            cache.update(keys, values, idx)

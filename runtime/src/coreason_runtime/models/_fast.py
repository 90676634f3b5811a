"""A lean one-token decode step for Llama-family models: the same modules, fewer Python frames.

A decode step of a small model on a CPU spends a large share of its time outside the matrix
products: transformers' generic forward walks ~15 modules and ~45 small tensor ops per layer,
builds position embeddings and masks, and dispatches attention through several layers of
indirection. Once a precision map makes the products cheap, that overhead is as large as the
products. :class:`FastStep` runs the same step directly: the model's own (possibly converted)
projection, MLP and norm modules, RMSNorm as one fused op, rotary embeddings from a table the
model's own rotary module filled, attention as one SDPA call over the session's cache layer,
and the caller's check at every layer boundary (the layer gate's contract, without hooks).

It applies to a single new token of a Llama-architecture model whose cache layers are full
attention; everything else (prefills, other architectures) runs through transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from coreason_runtime.models._formats import per_call_scaled
from coreason_runtime.models._gate import GateHook

__all__ = ["FastStep", "rowwise", "run_checks"]

Check = Callable[[], None]


def _rms(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", None)
    if type(module).__name__.endswith("RMSNorm") and weight is not None and eps is not None:
        return nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)
    out: torch.Tensor = module(x)  # a converted norm: its own forward
    return out


class FastStep:
    """The one-token decode step of a Llama-family model (see the module docstring)."""

    def __init__(self, model: Any) -> None:
        cfg = model.config
        decoder = model.get_decoder()
        self.model = model
        self.embed = decoder.embed_tokens
        self.layers = list(decoder.layers)
        self.norm = decoder.norm
        self.rotary = decoder.rotary_emb
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads)
        self.scaling = float(self.layers[0].self_attn.scaling)
        self._cos = self._sin = torch.empty(0)
        # modules whose own forward this step does not call: a hook on one of them (other than
        # a layer gate's, whose checks this step makes itself) sends it through transformers
        self._bypassed = [m for layer in self.layers for m in (layer, layer.self_attn, layer.mlp)]

    @classmethod
    def for_model(cls, model: Any) -> FastStep | None:
        """A fast step for ``model``, or None when its architecture is not the one handled."""
        cfg = getattr(model, "config", None)
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        ok = (
            cfg is not None
            and decoder is not None
            and getattr(cfg, "model_type", None) == "llama"
            and getattr(cfg, "hidden_act", None) == "silu"
            and getattr(cfg, "pretraining_tp", 1) == 1
            and all(hasattr(decoder, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb"))
        )
        return cls(model) if ok else None

    def _rope(self, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at ``pos`` ([1, 1, 1, head_dim]), from the model's own rotary module."""
        if pos >= self._cos.shape[0]:
            n = max(1024, 2 * (pos + 1))
            ids = torch.arange(n, device=self.embed.weight.device)[None]
            probe = torch.zeros(1, dtype=torch.float32, device=ids.device)
            cos, sin = self.rotary(probe, ids)
            self._cos, self._sin = cos[0], sin[0]
        return self._cos[pos].view(1, 1, 1, -1), self._sin[pos].view(1, 1, 1, -1)

    def usable(self, cache: Any) -> bool:
        """The cache's layers are full-attention layers this step can append to, and no hook
        waits on a module this step does not call."""
        layers = getattr(cache, "layers", None)
        if not layers or any(getattr(x, "is_sliding", False) for x in layers):
            return False
        for m in self._bypassed:
            if m._forward_hooks or any(
                not isinstance(h, GateHook) for h in m._forward_pre_hooks.values()
            ):
                return False
        return True

    def hidden(self, token: torch.Tensor, cache: Any, check: Check | None) -> torch.Tensor:
        """Append one token (shape ``[1, 1]``) to ``cache``; the final hidden state ``[d]``."""
        layers = cache.layers
        pos = layers[0].get_seq_length() if layers[0].is_initialized else 0
        cos, sin = self._rope(pos)
        half = self.head_dim // 2
        x = self.embed(token)
        for i, layer in enumerate(self.layers):
            if check is not None:
                check()
            attn = layer.self_attn
            h = _rms(layer.input_layernorm, x)
            q = attn.q_proj(h).view(1, 1, self.n_heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(1, 1, self.n_kv, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(1, 1, self.n_kv, self.head_dim).transpose(1, 2)
            q = q * cos + torch.cat((-q[..., half:], q[..., :half]), -1) * sin
            k = k * cos + torch.cat((-k[..., half:], k[..., :half]), -1) * sin
            keys, values = layers[i].update(k, v)
            o = nn.functional.scaled_dot_product_attention(
                q, keys, values, scale=self.scaling, enable_gqa=self.n_kv != self.n_heads
            )
            x = x + attn.o_proj(o.transpose(1, 2).reshape(1, 1, -1))
            mlp = layer.mlp
            h = _rms(layer.post_attention_layernorm, x)
            x = x + mlp.down_proj(nn.functional.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
        out: torch.Tensor = _rms(self.norm, x)[0, -1]
        return out

    def _rope_rows(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at each row's position ([B, 1, 1, head_dim])."""
        self._rope(max(positions))
        idx = torch.tensor(positions, device=self._cos.device)
        return self._cos[idx][:, None, None], self._sin[idx][:, None, None]

    def hidden_rows(
        self,
        tokens: torch.Tensor,
        caches: Sequence[Any],
        checks: Sequence[Check | None],
        dropped: Callable[[int, Exception], None],
    ) -> tuple[torch.Tensor, list[int]]:
        """One new token per sequence (``tokens`` shape ``[B]``), each appended to its own
        cache: the batched step of continuous batching.

        The projections and MLPs run once for the whole batch (their weights are read once);
        RoPE and attention run per row over that row's own cache layer, at its own position,
        so sequences of any lengths batch without padding. Each row's check runs at every
        layer boundary: a row whose check raises leaves the batch there (``dropped(row,
        error)`` is called at once; its cache holds the layers already run, for the caller to
        crop) and the others go on. Returns the final hidden states of the rows still in the
        batch (``[B', d]``) and their indices.
        """
        rows = list(range(len(caches)))
        positions = [
            (c.layers[0].get_seq_length() if c.layers[0].is_initialized else 0) for c in caches
        ]
        cos, sin = self._rope_rows(positions)
        half = self.head_dim // 2
        x = self.embed(tokens.view(-1, 1))
        for i, layer in enumerate(self.layers):
            keep = run_checks(rows, checks, dropped)
            if keep is not None:
                rows = [rows[j] for j in keep]
                if not rows:
                    break
                x, cos, sin = x[keep], cos[keep], sin[keep]
            b = len(rows)
            attn = layer.self_attn
            h = _rms(layer.input_layernorm, x)
            q = rowwise(attn.q_proj, h).view(b, 1, self.n_heads, self.head_dim).transpose(1, 2)
            k = rowwise(attn.k_proj, h).view(b, 1, self.n_kv, self.head_dim).transpose(1, 2)
            v = rowwise(attn.v_proj, h).view(b, 1, self.n_kv, self.head_dim).transpose(1, 2)
            q = q * cos + torch.cat((-q[..., half:], q[..., :half]), -1) * sin
            k = k * cos + torch.cat((-k[..., half:], k[..., :half]), -1) * sin
            outs = []
            for j, row in enumerate(rows):
                keys, values = caches[row].layers[i].update(k[j : j + 1], v[j : j + 1])
                outs.append(
                    nn.functional.scaled_dot_product_attention(
                        q[j : j + 1],
                        keys,
                        values,
                        scale=self.scaling,
                        enable_gqa=self.n_kv != self.n_heads,
                    )
                )
            o = torch.cat(outs)
            x = x + rowwise(attn.o_proj, o.transpose(1, 2).reshape(b, 1, -1))
            mlp = layer.mlp
            h = _rms(layer.post_attention_layernorm, x)
            x = x + rowwise(
                mlp.down_proj,
                nn.functional.silu(rowwise(mlp.gate_proj, h)) * rowwise(mlp.up_proj, h),
            )
        if not rows:
            return x[:0, -1], rows
        out: torch.Tensor = _rms(self.norm, x)[:, -1]
        return out, rows


def rowwise(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for a batch of rows, each row's result what it would be alone.

    A dynamically quantised layer (fbgemm int8) scales its activations over the whole input
    of a call, so one row's output would depend on the other rows of the batch: it runs row
    by row. Every other layer computes each row on its own already and runs once.
    """
    if x.shape[0] > 1 and per_call_scaled(module):
        return torch.cat([module(x[i : i + 1]) for i in range(x.shape[0])])
    out: torch.Tensor = module(x)
    return out


def run_checks(
    rows: Sequence[int],
    checks: Sequence[Check | None],
    dropped: Callable[[int, Exception], None],
) -> list[int] | None:
    """Run each row's check; the positions (in ``rows``) to keep, or None to keep them all."""
    failed: list[int] = []
    for j, row in enumerate(rows):
        check = checks[row]
        if check is None:
            continue
        try:
            check()
        except Exception as e:  # an interrupt, a deadline: this row leaves the batch
            failed.append(j)
            dropped(row, e)
    if not failed:
        return None
    return [j for j in range(len(rows)) if j not in failed]

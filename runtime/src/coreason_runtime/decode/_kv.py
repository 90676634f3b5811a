"""KV-cache surgery on a transformers DynamicCache: crop per layer, snapshot, splice, compare.

The caches the runtime makes (:func:`new_cache`) hold each layer's keys and values in a
buffer that grows by doubling (:class:`GrowingLayer`): appending a token writes in place
instead of concatenating (which copies the whole layer and allocates every token). A layer's
``keys``/``values`` are views of that buffer, valid until the layer is next updated; crops
are views too, and a layer whose tensors were replaced from outside (a restored snapshot) is
copied back into a buffer at its next update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache

__all__ = ["KVSnapshot", "crop_to", "kv_length", "kv_max_abs_diff", "new_cache", "release_cache"]

_LAYER_CLASS: list[type] = []


def _growing_layer() -> type:
    """The :class:`GrowingLayer` class (built on first use: transformers is imported lazily)."""
    if _LAYER_CLASS:
        return _LAYER_CLASS[0]
    import torch
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):  # type: ignore[misc,no-untyped-call]  # untyped base
        """A DynamicLayer whose keys and values are views of a buffer grown by doubling."""

        keys: Any
        values: Any

        def __init__(self) -> None:
            super().__init__()  # type: ignore[no-untyped-call]  # transformers is untyped
            self._kbuf: torch.Tensor | None = None
            self._vbuf: torch.Tensor | None = None

        def _backed(self, n: int, new: torch.Tensor) -> bool:
            buf = self._kbuf
            if buf is None or buf.shape[:-2] != new.shape[:-2] or buf.dtype != new.dtype:
                return False
            if n == 0:
                return True
            keys = self.keys
            return bool(keys.data_ptr() == buf.data_ptr() and keys.stride() == buf.stride())

        def _regrow(self, n: int, new: torch.Tensor, capacity: int) -> None:
            shape = (*new.shape[:-2], capacity, new.shape[-1])
            kbuf = torch.empty(shape, dtype=new.dtype, device=new.device)
            vbuf = torch.empty(shape, dtype=new.dtype, device=new.device)
            if n:
                kbuf[..., :n, :].copy_(self.keys[..., :n, :])
                vbuf[..., :n, :].copy_(self.values[..., :n, :])
            self._kbuf, self._vbuf = kbuf, vbuf

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = self.get_seq_length()
            end = n + key_states.shape[-2]
            if not self._backed(n, key_states) or end > self._kbuf.shape[-2]:  # type: ignore[union-attr]
                self._regrow(n, key_states, max(64, 2 * end))
            kbuf, vbuf = self._kbuf, self._vbuf
            assert kbuf is not None and vbuf is not None
            kbuf[..., n:end, :].copy_(key_states)
            vbuf[..., n:end, :].copy_(value_states)
            self.keys, self.values = kbuf[..., :end, :], vbuf[..., :end, :]
            return self.keys, self.values

        def adopt(self, parts: Sequence[torch.Tensor], length: int) -> None:
            """Hold the first ``length`` positions of ``parts`` (blocks ``[2, heads, n,
            dim]``, keys then values, in order) in a fresh buffer with room to grow: one copy
            per block, and the next update appends in place instead of copying it all."""
            first = parts[0]
            capacity = max(64, length + max(256, length // 8))
            shape = (2, 1, first.shape[1], capacity, first.shape[-1])
            kv = torch.empty(shape, dtype=first.dtype, device=first.device)
            pos = 0
            for part in parts:
                n = min(int(part.shape[-2]), length - pos)
                if n <= 0:
                    break
                kv[:, 0, :, pos : pos + n].copy_(part[:, :, :n])
                pos += n
            self._kbuf, self._vbuf = kv[0], kv[1]
            keys, values = kv[0][..., :pos, :], kv[1][..., :pos, :]
            self.lazy_initialization(keys, values)
            self.keys, self.values = keys, values

        def reset(self) -> None:
            self._kbuf = self._vbuf = None
            super().reset()

    _LAYER_CLASS.append(GrowingLayer)
    return GrowingLayer


def new_cache(config: Any) -> DynamicCache:
    """An empty DynamicCache for a model with ``config``, its full-attention layers growing
    in place (:class:`GrowingLayer`)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=config)
    layer_class = _growing_layer()
    layers: list[Any] = cache.layers
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer:  # sliding-window layers keep their own rules
            layers[i] = layer_class()
    return cache


def release_cache(cache: DynamicCache) -> None:
    """Drop every layer's tensors and growth buffers, so their memory is freed (a crop keeps
    views of it; a :class:`GrowingLayer` keeps its buffer)."""
    layers: list[Any] = list(cache.layers)
    for layer in layers:
        growing = bool(_LAYER_CLASS) and isinstance(layer, _LAYER_CLASS[0])
        if growing:  # (a flag, not a narrowing: the class is built at run time)
            layer._kbuf = layer._vbuf = None
        layer.keys = layer.values = None
        layer.is_initialized = False


def kv_length(cache: DynamicCache) -> int:
    """Tokens held by the cache (the shortest layer: layers may differ mid-forward)."""
    layers: list[Any] = list(cache.layers)
    lengths = [layer.get_seq_length() for layer in layers]
    return min(lengths) if lengths else 0


def crop_to(cache: DynamicCache, length: int) -> None:
    """Cut every layer back to ``length`` tokens.

    ``DynamicCache.crop`` removes the same count from every layer, which is wrong after a
    forward pass abandoned half way (the first layers hold one token more than the rest), so
    each layer is cropped to the absolute length instead.
    """
    layers: list[Any] = list(cache.layers)
    for layer in layers:
        extra = layer.get_seq_length() - length
        if extra > 0:
            layer.crop(-extra)


@dataclass
class KVSnapshot:
    """Detached copies of every layer's keys and values from position ``start`` on."""

    start: int
    keys: list[torch.Tensor | None]
    values: list[torch.Tensor | None]

    @classmethod
    def take(cls, cache: DynamicCache, start: int = 0) -> KVSnapshot:
        """Copy positions ``start:`` of every initialised layer."""
        keys: list[Any] = []
        values: list[Any] = []
        layers: list[Any] = list(cache.layers)
        for layer in layers:
            if not layer.is_initialized or layer.get_seq_length() == 0:
                keys.append(None)
                values.append(None)
                continue
            keys.append(layer.keys[..., start:, :].clone())
            values.append(layer.values[..., start:, :].clone())
        return cls(start, keys, values)

    @property
    def length(self) -> int:
        """Absolute length of the cache this snapshot restores."""
        first = next((k for k in self.keys if k is not None), None)
        return self.start + (0 if first is None else int(first.shape[-2]))

    def restore(self, cache: DynamicCache) -> None:
        """Make ``cache`` hold exactly what it held when the snapshot was taken.

        Positions before ``start`` are kept from ``cache`` (they must not have changed);
        positions from ``start`` on are replaced by the saved copies.
        """
        import torch

        crop_to(cache, self.start)
        layers: list[Any] = list(cache.layers)
        for idx, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            if k is None or v is None:
                continue
            if idx < len(layers) and layers[idx].is_initialized:
                layer = layers[idx]
                if layer.get_seq_length() > 0:
                    layer.keys = torch.cat([layer.keys, k.clone()], dim=-2)
                    layer.values = torch.cat([layer.values, v.clone()], dim=-2)
                    continue
            cache.update(k.clone(), v.clone(), idx)


def kv_max_abs_diff(a: DynamicCache, b: DynamicCache) -> float:
    """Largest absolute difference between two caches' keys and values (inf if shapes differ)."""
    layers_a: list[Any] = list(a.layers)
    layers_b: list[Any] = list(b.layers)
    if len(layers_a) != len(layers_b):
        return float("inf")
    worst = 0.0
    for la, lb in zip(layers_a, layers_b, strict=True):
        if la.keys is None or lb.keys is None:
            if la.keys is not lb.keys:
                return float("inf")
            continue
        if la.keys.shape != lb.keys.shape or la.values.shape != lb.values.shape:
            return float("inf")
        worst = max(
            worst,
            float((la.keys - lb.keys).abs().max()),
            float((la.values - lb.values).abs().max()),
        )
    return worst

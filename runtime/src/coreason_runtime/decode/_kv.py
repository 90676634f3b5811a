"""KV-cache surgery on a transformers DynamicCache: crop per layer, snapshot, splice, compare."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache

__all__ = ["KVSnapshot", "crop_to", "kv_length", "kv_max_abs_diff", "new_cache"]


def new_cache(config: Any) -> DynamicCache:
    """An empty DynamicCache for a model with ``config``."""
    from transformers import DynamicCache

    return DynamicCache(config=config)


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

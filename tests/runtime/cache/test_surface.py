"""The cache package's public surface."""

from __future__ import annotations

import types

from coreason_runtime import cache


def test_all_is_sorted_and_exactly_the_public_names() -> None:
    public = {
        n
        for n, v in vars(cache).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    } - {"annotations"}
    assert cache.__all__ == sorted(cache.__all__)
    assert set(cache.__all__) == public

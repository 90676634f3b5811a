"""The sched and txn packages export exactly their public names."""

from __future__ import annotations

import types

import coreason_runtime.sched as sched
import coreason_runtime.txn as txn
import pytest


def _isort_key(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, then Classes, then the rest."""
    if name.isupper():
        return (0, name)
    return (1, name) if name[:1].isupper() else (2, name)


@pytest.mark.parametrize("module", [sched, txn], ids=["sched", "txn"])
def test_all_lists_exactly_the_public_names_in_order(module: types.ModuleType) -> None:
    public = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    } - {"annotations"}
    # a list, compared as one: a missing, extra, repeated or misplaced name each fails
    assert module.__all__ == sorted(public, key=_isort_key)

"""The sched and txn packages export exactly their public names."""

from __future__ import annotations

import types

import coreason_runtime.sched as sched
import coreason_runtime.txn as txn
import pytest


@pytest.mark.parametrize("module", [sched, txn], ids=["sched", "txn"])
def test_all_lists_exactly_the_public_names_in_order(module: types.ModuleType) -> None:
    public = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    } - {"annotations"}
    assert set(module.__all__) == public

"""Fixtures for the Jupyter layer: a runtime on scripted tiers and a bare InteractiveShell."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from coreason_runtime import Coordinator, RuntimeConfig
from coreason_runtime.tensor import ScriptedTier
from IPython.core.interactiveshell import InteractiveShell

import coreason_lab


@pytest.fixture
def rt(home: Path) -> Iterator[Coordinator]:
    """A Coordinator in a tmp home, SQLite ledgers, no model: tiers are set per test."""
    runtime = Coordinator(RuntimeConfig(home=home, oracle=None))
    runtime.router.set_tiers([ScriptedTier("local", ['{"value": 42}'], repeat_last=True)])
    yield runtime
    runtime.close()


@pytest.fixture(scope="session")
def _shell() -> tuple[InteractiveShell, frozenset[str]]:
    shell = InteractiveShell.instance()
    return shell, frozenset(shell.user_ns)


def _clean(shell: InteractiveShell, baseline: frozenset[str]) -> None:
    # cheaper than shell.reset() (0.5 s each): drop what a test added to the namespace
    for key in set(shell.user_ns) - baseline:
        del shell.user_ns[key]
    shell.config.pop("CoreasonMagics", None)  # %config in one test must not leak


@pytest.fixture
def ip(
    _shell: tuple[InteractiveShell, frozenset[str]], rt: Coordinator
) -> Iterator[InteractiveShell]:
    """The shell with ``%load_ext coreason_lab`` done against ``rt``, and a clean namespace."""
    shell, baseline = _shell
    _clean(shell, baseline)
    coreason_lab.load_ipython_extension(shell, runtime=rt)
    shell.run_cell("from pydantic import BaseModel\nclass Answer(BaseModel):\n    value: int\n")
    yield shell
    coreason_lab.unload_ipython_extension(shell)
    _clean(shell, baseline)


@pytest.fixture
def magics(ip: InteractiveShell) -> coreason_lab.CoreasonMagics:
    return coreason_lab.load_ipython_extension(ip)


def tiers(rt: Coordinator, *tier: Any) -> None:
    """Replace the cascade (the magics re-wrap it with the control gate on the next ask)."""
    rt.router.set_tiers(list(tier))

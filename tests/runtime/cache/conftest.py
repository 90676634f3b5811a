"""A subgoal cache on a fresh SQLite store with its own bus."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from coreason_runtime import EventBus
from coreason_runtime.cache import SQLiteStore, SubgoalCache


@pytest.fixture
def cache(home: Path, bus: EventBus) -> Iterator[SubgoalCache]:
    c = SubgoalCache(SQLiteStore(home / "cache.sqlite"), bus=bus)
    yield c
    c.close()

"""Markers say what a test needs, checked: a test that starts a server or loads the real model
without the marker naming it fails, so the fast run (README, "Development") stays fast.

After each test, the fixtures it used (requested by name or through ``getfixturevalue``) are
looked up in :data:`NEEDS`; loading the real model in this process is seen as a new entry in the
loader's per-process cache. Work started in a subprocess without a fixture (a CLI call, a
kernel) is not seen: such tests carry their markers at module level.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

import pytest

# fixture -> the markers a test using it must carry
NEEDS: dict[str, frozenset[str]] = {
    "redis_server": frozenset({"redis"}),
    "redis_url": frozenset({"redis"}),
    "serve_process": frozenset({"serve"}),
    "serve_real": frozenset({"serve", "model"}),
    "temporal_server": frozenset({"temporal"}),
    "real_model": frozenset({"model"}),
    "real_engine": frozenset({"model"}),
}


def missing_markers(
    fixtures: Iterable[str], markers: Iterable[str], *, loaded_real_model: bool
) -> set[str]:
    """The markers a test lacks, given the fixtures it used and whether it loaded the model."""
    needed: set[str] = {"model"} if loaded_real_model else set()
    for name in fixtures:
        needed |= NEEDS.get(name, frozenset())
    return needed - set(markers)


def _real_models_loaded() -> int:
    loader = sys.modules.get("coreason_runtime.models._loader")
    if loader is None:  # nothing imported the loader, so nothing loaded a model
        return 0
    from coreason_runtime import DEFAULT_MODEL

    # the loader's private per-process cache is the one place that knows what was loaded
    return sum(1 for m in loader._LOADED.values() if m.name == DEFAULT_MODEL)


@pytest.fixture(autouse=True)
def _markers_name_what_the_test_needs(request: pytest.FixtureRequest) -> Iterator[None]:
    before = _real_models_loaded()
    yield
    missing = missing_markers(
        request.fixturenames,
        (m.name for m in request.node.iter_markers()),
        loaded_real_model=_real_models_loaded() > before,
    )
    if missing:
        marks = ", ".join(f"@pytest.mark.{m}" for m in sorted(missing))
        pytest.fail(f"{request.node.nodeid} needs {marks}: it starts a server or loads the model")

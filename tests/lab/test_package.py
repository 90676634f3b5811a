"""The public surface of coreason_lab: exactly the names in ``__all__`` (ruff keeps it sorted)."""

from __future__ import annotations

import coreason_lab


def test_every_name_in_all_exists() -> None:
    assert all(hasattr(coreason_lab, name) for name in coreason_lab.__all__)


def test_public_names_are_exactly_all() -> None:
    public = {n for n in vars(coreason_lab) if not n.startswith("_") and n != "annotations"}
    modules = {n for n in public if type(getattr(coreason_lab, n)).__name__ == "module"}
    assert public - modules == set(coreason_lab.__all__) - {"__version__"}

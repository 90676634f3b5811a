"""What a cache lookup returns, and the hit and miss counts of one cache."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coreason_runtime.cache._canonical import CanonicalForm
    from coreason_runtime.cache._prompt import PromptForm
    from coreason_runtime.cache._store import Entry

__all__ = ["CacheHit", "HitCounts"]


@dataclass(frozen=True)
class CacheHit:
    """A verified hit. ``value`` is the result in the caller's own names (a SymPy object for
    subgoals, the JSON text for requests); ``entry`` is the stored entry (provenance,
    verifier); ``cross_workflow`` says whether another workflow or project admitted it."""

    key: str
    kind: str
    value: Any
    entry: Entry
    cross_workflow: bool
    form: CanonicalForm | PromptForm | None = None

    @property
    def value_json(self) -> str | None:
        return self.value if isinstance(self.value, str) else None


class HitCounts:
    """Hits and misses by kind, and the false hits verification blocked (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}
        self.false_hits_blocked = 0

    def count(self, kind: str, hit: bool) -> None:
        with self._lock:
            c = self._counts.setdefault(kind, [0, 0])
            c[0 if hit else 1] += 1

    def block_false_hit(self) -> None:
        with self._lock:
            self.false_hits_blocked += 1

    def ratio(self, kind: str | None = None) -> float:
        """Hits / lookups, overall or for one ``kind``; 0.0 before any lookup."""
        with self._lock:
            rows = [self._counts.get(kind, [0, 0])] if kind else list(self._counts.values())
        hits = sum(r[0] for r in rows)
        total = hits + sum(r[1] for r in rows)
        return hits / total if total else 0.0

    def by_kind(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {k: {"hits": v[0], "misses": v[1]} for k, v in self._counts.items()}

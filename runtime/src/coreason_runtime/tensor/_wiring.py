"""How a Coordinator builds its default cascade: the local model, then the oracle if set."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from coreason_runtime.tensor._schema import CompiledSchema, SchemaSpec
from coreason_runtime.tensor._types import Meter, Tier, TierOutput, TierRequest

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator

__all__ = ["LazyLocalTier", "default_tiers"]


class LazyLocalTier:
    """The local tier, loading its model on first use so that a Coordinator starts instantly."""

    name = "local"
    steerable = True

    def __init__(self, rt: Coordinator) -> None:
        self._rt = rt
        self._tier: Any = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._tier is not None

    def load(self) -> Any:
        """Load the model and build the real tier (idempotent)."""
        with self._lock:
            if self._tier is None:
                from coreason_runtime.tensor._local import LocalTier

                self._tier = LocalTier.for_runtime(self._rt)
            return self._tier

    @property
    def model_name(self) -> str:
        return self._rt.config.model

    def compile(self, spec: SchemaSpec) -> CompiledSchema:
        return self.load().compiler.compile(spec)  # type: ignore[no-any-return]

    def complete(self, request: TierRequest, meter: Meter) -> TierOutput:
        return self.load().complete(request, meter)  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the real tier if it was ever loaded; never load a model just to close it."""
        tier = self._tier
        closer = getattr(tier, "close", None)
        if callable(closer):
            closer()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.load(), name)


def default_tiers(rt: Coordinator) -> list[Tier]:
    """``[local, oracle]``, or ``[local]`` when no oracle is configured."""
    tiers: list[Tier] = [LazyLocalTier(rt)]
    if rt.config.oracle is not None:
        from coreason_runtime.tensor._remote import RemoteTier

        tiers.append(RemoteTier(rt.config.oracle, bus=rt.bus))
    return tiers

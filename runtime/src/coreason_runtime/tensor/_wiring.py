"""How a Coordinator builds its default cascade: the local model, then the oracle if set."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from coreason_runtime.tensor._schema import CompiledSchema, SchemaSpec
from coreason_runtime.tensor._types import (
    Messages,
    Meter,
    SteerableTier,
    Tier,
    TierOutput,
    TierRequest,
)

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator
    from coreason_runtime.tensor._local import LocalTier

__all__ = ["LazyLocalTier", "default_tiers"]


class LazyLocalTier(SteerableTier):
    """The local tier, loading its model on first use so that a Coordinator starts instantly.

    Everything but :attr:`model_name` and :meth:`close` loads the model; :meth:`load` returns
    the real :class:`~coreason_runtime.tensor.LocalTier` (its engine, prefix cache, ...).
    """

    name = "local"

    def __init__(self, rt: Coordinator) -> None:
        self._rt = rt
        self._tier: LocalTier | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._tier is not None

    def load(self) -> LocalTier:
        """Load the model and build the real tier (idempotent)."""
        with self._lock:
            if self._tier is None:
                from coreason_runtime.tensor._local import LocalTier

                self._tier = LocalTier.for_runtime(self._rt)
            return self._tier

    @property
    def model_name(self) -> str:
        return self._rt.config.model

    @property
    def revision(self) -> str | None:
        """The weights' revision, read from the model's manifest: the model stays unloaded
        (a replayed request never needs it)."""
        if self._tier is not None:
            return self._tier.revision
        from coreason_runtime.models import model_revision

        return model_revision(self._rt.config.model)

    def compile(self, spec: SchemaSpec) -> CompiledSchema:
        return self.load().compile(spec)

    def count_prompt(self, messages: Messages, compiled: CompiledSchema | None = None) -> int:
        return self.load().count_prompt(messages, compiled)

    def complete(self, request: TierRequest, meter: Meter) -> TierOutput:
        return self.load().complete(request, meter)

    def close(self) -> None:
        """Close the real tier if it was ever loaded; never load a model just to close it."""
        if self._tier is not None:
            self._tier.close()


def default_tiers(rt: Coordinator) -> list[Tier]:
    """``[local, oracle]``, or ``[local]`` when no oracle is configured."""
    tiers: list[Tier] = [LazyLocalTier(rt)]
    if rt.config.oracle is not None:
        from coreason_runtime.tensor._remote import RemoteTier

        oracle = RemoteTier.for_runtime(rt)
        if oracle is not None:
            tiers.append(oracle)
    return tiers

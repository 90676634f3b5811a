"""The Tensor Engine: the router, its tiers, the schema compiler and the correction loop."""

from __future__ import annotations

from typing import Any

from coreason_runtime._signals import add_interrupt_note, interrupt_summary
from coreason_runtime.tensor._correction import REPAIRS, is_retryable, reask
from coreason_runtime.tensor._plan import DryRun, TierPlan
from coreason_runtime.tensor._replay import ReplayRecord
from coreason_runtime.tensor._router import TensorRouter
from coreason_runtime.tensor._schema import CompiledSchema, SchemaSpec, schema_key
from coreason_runtime.tensor._scripted import ScriptedSteerableTier, ScriptedTier
from coreason_runtime.tensor._stream import Partial, PartialStream, PartialValues, parse_partial
from coreason_runtime.tensor._types import (
    Attempt,
    BaseTier,
    BlackBoxTier,
    Meter,
    Result,
    SteerableTier,
    Tier,
    TierOutput,
    TierRequest,
    UnmeteredMeter,
)


def __getattr__(name: str) -> Any:
    # The tiers and the compiler import heavy optional packages: load them on first use.
    if name == "LocalTier":
        from coreason_runtime.tensor._local import LocalTier

        return LocalTier
    if name == "RemoteTier":
        from coreason_runtime.tensor._remote import RemoteTier

        return RemoteTier
    if name == "UniversalCompiler":
        from coreason_runtime.tensor._compiler import UniversalCompiler

        return UniversalCompiler
    raise AttributeError(name)


__all__ = [
    "REPAIRS",
    "Attempt",
    "BaseTier",
    "BlackBoxTier",
    "CompiledSchema",
    "DryRun",
    "LocalTier",
    "Meter",
    "Partial",
    "PartialStream",
    "PartialValues",
    "RemoteTier",
    "ReplayRecord",
    "Result",
    "SchemaSpec",
    "ScriptedSteerableTier",
    "ScriptedTier",
    "SteerableTier",
    "TensorRouter",
    "Tier",
    "TierOutput",
    "TierPlan",
    "TierRequest",
    "UniversalCompiler",
    "UnmeteredMeter",
    "add_interrupt_note",
    "interrupt_summary",
    "is_retryable",
    "parse_partial",
    "reask",
    "schema_key",
]

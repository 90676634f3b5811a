"""The Tensor Engine: the router, its tiers, the schema compiler and the correction loop."""

from __future__ import annotations

from coreason_runtime.tensor._correction import REPAIRS, is_retryable, reask
from coreason_runtime.tensor._router import TensorRouter
from coreason_runtime.tensor._schema import CompiledSchema, SchemaSpec, schema_key
from coreason_runtime.tensor._scripted import ScriptedTier
from coreason_runtime.tensor._types import (
    Attempt,
    Meter,
    Result,
    SteerableTier,
    Tier,
    TierOutput,
    TierRequest,
    UnmeteredMeter,
)

__all__ = [
    "REPAIRS",
    "Attempt",
    "CompiledSchema",
    "Meter",
    "Result",
    "SchemaSpec",
    "ScriptedTier",
    "SteerableTier",
    "TensorRouter",
    "Tier",
    "TierOutput",
    "TierRequest",
    "UnmeteredMeter",
    "is_retryable",
    "reask",
    "schema_key",
]

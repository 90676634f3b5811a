"""Decode sessions over an explicit KV cache: pause/resume/inject, span repair, lazy thunks,
KV blocks in tiers (GPU, RAM, disk)."""

from __future__ import annotations

from coreason_runtime.decode._blocks import BlockRef, KVSpace, chain_of
from coreason_runtime.decode._checkers import SchemaVerifier, UnitsVerifier
from coreason_runtime.decode._engine import DecodeEngine, Preemptible, TokenGroups
from coreason_runtime.decode._grammar import GrammarMask, TokenizerInfo, tokenizer_info
from coreason_runtime.decode._kv import KVSnapshot, crop_to, kv_max_abs_diff
from coreason_runtime.decode._offsets import TokenText
from coreason_runtime.decode._repair import RepairResult, SpanContext, check_span, repair_span
from coreason_runtime.decode._sampler import Sampler
from coreason_runtime.decode._session import (
    Checkpoint,
    DecodeSession,
    Origin,
    SessionEdit,
    SessionState,
    Step,
)
from coreason_runtime.decode._store import BlockStore, KVStats
from coreason_runtime.decode._thunks import (
    DemandExecutor,
    Expander,
    ModelExpander,
    Thunk,
    expander,
    parse_thunks,
    thunkify,
)
from coreason_runtime.decode._verify import (
    StepFailure,
    SympyVerifier,
    Verdict,
    Verifier,
    locate_failures,
)

__all__ = [
    "BlockRef",
    "BlockStore",
    "Checkpoint",
    "DecodeEngine",
    "DecodeSession",
    "DemandExecutor",
    "Expander",
    "GrammarMask",
    "KVSnapshot",
    "KVSpace",
    "KVStats",
    "ModelExpander",
    "Origin",
    "Preemptible",
    "RepairResult",
    "Sampler",
    "SchemaVerifier",
    "SessionEdit",
    "SessionState",
    "SpanContext",
    "Step",
    "StepFailure",
    "SympyVerifier",
    "Thunk",
    "TokenGroups",
    "TokenText",
    "TokenizerInfo",
    "UnitsVerifier",
    "Verdict",
    "Verifier",
    "chain_of",
    "check_span",
    "crop_to",
    "expander",
    "kv_max_abs_diff",
    "locate_failures",
    "parse_thunks",
    "repair_span",
    "thunkify",
    "tokenizer_info",
]

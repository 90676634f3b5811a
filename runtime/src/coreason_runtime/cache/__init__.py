"""Caches that make solved work reusable: canonical forms, stores, checkpoints, subgoal cache.

* :func:`canonicalize` — a canonical form and content key for a SymPy subgoal, with the maps
  back to the caller's names (renaming, term order, scale, affine substitution);
* :class:`SQLiteStore`, :class:`RedisStore`, :class:`FallbackStore` — content-addressed stores;
* :class:`SubgoalCache` — verified lookups and admission for subgoals and model requests;
* :class:`ProofChain` — proof-state checkpoints and cousin-branch reuse.
"""

from __future__ import annotations

from coreason_runtime.cache._canonical import CanonicalForm, canonicalize
from coreason_runtime.cache._checkpoint import Checkpoint, ProofChain, Step
from coreason_runtime.cache._hits import CacheHit
from coreason_runtime.cache._normal import normal_form, serialize
from coreason_runtime.cache._parse import Limits, safe_parse
from coreason_runtime.cache._prompt import PromptForm, canonical_prompt
from coreason_runtime.cache._redis import FallbackStore, RedisStore
from coreason_runtime.cache._requests import RequestVerifier
from coreason_runtime.cache._store import CacheStore, Entry, SQLiteStore
from coreason_runtime.cache._subgoal import SubgoalCache
from coreason_runtime.cache._verify import SympyVerifier, Verifier, numeric_equal

__all__ = [
    "CacheHit",
    "CacheStore",
    "CanonicalForm",
    "Checkpoint",
    "Entry",
    "FallbackStore",
    "Limits",
    "PromptForm",
    "ProofChain",
    "RedisStore",
    "RequestVerifier",
    "SQLiteStore",
    "Step",
    "SubgoalCache",
    "SympyVerifier",
    "Verifier",
    "canonical_prompt",
    "canonicalize",
    "normal_form",
    "numeric_equal",
    "safe_parse",
    "serialize",
]

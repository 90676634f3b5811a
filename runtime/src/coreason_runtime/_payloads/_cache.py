"""Payloads of the subgoal cache and proof-chain checkpoints."""

from __future__ import annotations

from coreason_runtime._payloads._base import EventPayload

__all__ = [
    "CacheAdmitted",
    "CacheEvicted",
    "CacheGrafted",
    "CacheLookupHit",
    "CacheLookupMiss",
    "CheckpointRestored",
    "CheckpointSaved",
]


class CacheLookupHit(EventPayload):
    """``cache.hit``: a ``kind`` lookup (integral, derivative, request, step …) found ``key``,
    verified by ``verifier``; ``cross_workflow`` when another workflow admitted it."""

    key: str
    kind: str
    cross_workflow: bool
    admitted_by: str | None
    verifier: str


class CacheLookupMiss(EventPayload):
    """``cache.miss``: a ``kind`` lookup of ``key`` found nothing usable (``reason``)."""

    key: str
    kind: str
    reason: str


class CacheAdmitted(EventPayload):
    """``cache.admit``: a verified result was offered to the cache; ``admitted`` says if it
    went in (``reason`` when not). ``key`` is None when refused before one was computed."""

    key: str | None
    kind: str
    admitted: bool
    reason: str | None
    sightings: int | None  # how many workflows have produced it; None if never counted
    verifier: str | None  # the verifier of an admitted entry


class CacheEvicted(EventPayload):
    """``cache.evict``: entries dropped to stay within capacity."""

    keys: list[str]
    count: int


class CacheGrafted(EventPayload):
    """``cache.graft``: proof chain ``chain`` took ``step`` from a cached result made on
    another branch (``from_branch``) of root ``from_root``."""

    chain: str
    step: str
    key: str
    from_branch: str | None
    from_root: str | None
    same_root: bool


class CheckpointSaved(EventPayload):
    """``cache.checkpoint_saved``: proof chain ``chain`` reached verified checkpoint ``index``
    by ``step``; ``state`` is the state's text (cut to 200 characters)."""

    chain: str
    index: int
    step: str
    state: str
    grafted_from: str | None


class CheckpointRestored(EventPayload):
    """``cache.checkpoint_restored``: proof chain ``chain`` went back to checkpoint ``index``
    (``reason``: "resume", "failure" …)."""

    chain: str
    index: int
    reason: str

"""Payloads of the KV block store: reads, misses, moves between tiers, and detected faults.

Every one carries ``tiers``, the bytes each tier (``gpu``, ``ram``, ``disk``) holds after the
operation, so a dashboard shows the tiers from the events alone.
"""

from __future__ import annotations

from coreason_runtime._payloads._base import EventPayload

__all__ = ["KVFault", "KVMiss", "KVMoved", "KVPredicted", "KVRead"]


class KVRead(EventPayload):
    """``kv.read``: a restore (a prefix reused, a paused session resumed) asked for ``blocks``
    block groups (every layer of a run of tokens): ``hits`` were in a fast tier (GPU or RAM,
    prefetched ones included), ``misses`` were read from disk while the decoder waited,
    ``absent`` were lost (a fault, an eviction) and are recomputed. ``tokens`` of KV came back.
    """

    session: str | None
    reason: str  # "prefix" | "resume" | "edit"
    tokens: int
    blocks: int
    hits: int
    misses: int
    absent: int
    wait_ms: float
    tiers: dict[str, int]


class KVMiss(EventPayload):
    """``kv.miss``: the decoder waited ``wait_ms`` for ``blocks`` block groups (``bytes``)
    that were not in a fast tier; ``recomputed`` tokens had no usable copy anywhere."""

    session: str | None
    reason: str
    blocks: int
    bytes: int
    wait_ms: float
    recomputed: int
    tiers: dict[str, int]


class KVPredicted(EventPayload):
    """``kv.predicted``: how the prefetches the predictor started after the previous read
    fared at this read: ``hits`` block groups were in RAM when read (the decoder did not
    wait), ``late`` were still on their way (it waited ``wait_ms`` for them), ``wasted`` were
    not read (``bytes`` read from disk for nothing; they leave RAM first)."""

    session: str | None
    hits: int
    late: int
    wasted: int
    bytes: int
    wait_ms: float
    tiers: dict[str, int]


class KVMoved(EventPayload):
    """``kv.promoted`` / ``kv.demoted``: ``blocks`` block groups (``bytes``) went from tier
    ``src`` to ``dst`` (``"none"`` when dropped) because of ``reason`` ("prefetch", "demand",
    "warmup", "predicted", "pause", "capacity", "write")."""

    blocks: int
    bytes: int
    src: str
    dst: str
    reason: str
    tiers: dict[str, int]


class KVFault(EventPayload):
    """``kv.fault``: a block copy failed a check and was dropped (never used): ``reason`` is
    "checksum", "truncated", "header", "namespace", "mismatch", "missing", "disk_full" or
    "write_error"; ``detail`` says where."""

    reason: str
    detail: str
    blocks: int
    tiers: dict[str, int]

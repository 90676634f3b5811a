"""Payloads of routing: the policy's choice for a request, and a tier's health."""

from __future__ import annotations

from coreason_runtime._payloads._base import EventPayload

__all__ = ["RouteDecided", "TierHealthChanged"]


class RouteDecided(EventPayload):
    """``route.decided``: the routing policy's plan for one request.

    ``tiers`` are tried in that order (stopping at the first answer); ``skipped`` says why
    each other tier is not; ``estimates`` holds, per tier, the policy's ``p`` (success),
    ``cost`` (C), ``reward`` and ``optimistic`` (reward plus exploration bonus).
    """

    policy: str
    family: str
    tiers: list[str]
    skipped: dict[str, str]
    reason: str
    estimates: dict[str, dict[str, float]]


class TierHealthChanged(EventPayload):
    """``route.tier_health``: a tier went from ``previous`` to ``state`` (``ok`` or
    ``degraded``), with the ``reason``."""

    tier: str
    state: str
    previous: str
    reason: str

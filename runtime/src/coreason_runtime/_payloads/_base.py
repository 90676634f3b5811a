"""The base of every event payload: frozen, no unknown fields, JSON round-trippable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["EventPayload"]


class EventPayload(BaseModel):
    """What one kind of event says. Each :class:`~coreason_runtime.EventType` has exactly one
    payload class (``coreason_runtime.events.PAYLOADS``), so the same event type carries the
    same fields wherever it is emitted and readers use fields, never key guesses.

    Infinite and NaN floats (an uncapped budget, no slack constraint) survive a JSON round trip.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

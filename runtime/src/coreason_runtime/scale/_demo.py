"""A scripted tier that takes time per token, for trying a cluster without a model.

``coreason worker --setup coreason_runtime.scale._demo:paced`` gives a worker a black-box tier
that answers :data:`DEMO_SCHEMA` with ``COREASON_DEMO_TOKENS`` output tokens, spending
``COREASON_DEMO_TOKEN_S`` seconds on each. Tokens are charged to the budget one by one like a
model's, and each passes the workflow's controls, so ceilings, suspensions, pauses and aborts
behave as with a model, only cheaper (no model is loaded).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from coreason_runtime.tensor._schema import CompiledSchema
from coreason_runtime.tensor._types import BlackBoxTier, Messages, Meter, TierOutput, TierRequest

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator

__all__ = ["DEMO_SCHEMA", "PacedTier", "paced"]

DEMO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}


class PacedTier(BlackBoxTier):
    """A black-box tier answering every request with ``{"answer": "<words>"}``: ``tokens``
    output tokens (whitespace-separated words of the JSON), ``token_s`` seconds each, each
    checked and charged on the meter before it is produced (the router's meter passes the
    workflow's controls at every charge)."""

    def __init__(self, name: str = "local", *, tokens: int = 20, token_s: float = 0.05) -> None:
        words = " ".join(f"w{i}" for i in range(max(tokens - 1, 1)))
        self.name = name
        self.text = f'{{"answer": "{words}"}}'
        self.token_s = token_s

    @property
    def model_name(self) -> str:
        return "paced"

    def count_prompt(self, messages: Messages, compiled: CompiledSchema | None = None) -> int:
        return sum(max(len(m["content"].split()), 1) for m in messages)

    def complete(self, request: TierRequest, meter: Meter) -> TierOutput:
        tokens_in = self.count_prompt(request.messages)
        meter.charge(tokens_in=tokens_in)
        pieces = self.text.split(" ")[: request.max_tokens]
        for _ in pieces:
            time.sleep(self.token_s)
            meter.check(tokens_out=1)
            meter.charge(tokens_out=1)
        finished = len(pieces) == len(self.text.split(" "))
        return TierOutput(
            text=" ".join(pieces),
            tokens_in=tokens_in,
            tokens_out=len(pieces),
            model="paced",
            finish_reason="stop" if finished else "length",
        )


def paced(rt: Coordinator) -> None:
    """A worker setup: the runtime's cascade becomes one :class:`PacedTier` named ``local``
    (``COREASON_DEMO_TOKENS``, default 20; ``COREASON_DEMO_TOKEN_S``, default 0.05)."""
    tokens = int(os.environ.get("COREASON_DEMO_TOKENS", "20"))
    token_s = float(os.environ.get("COREASON_DEMO_TOKEN_S", "0.05"))
    rt.router.set_tiers([PacedTier("local", tokens=tokens, token_s=token_s)])

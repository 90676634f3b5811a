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

from coreason_runtime.tensor._scripted import ScriptedTier
from coreason_runtime.tensor._types import Meter, TierOutput, TierRequest

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator

__all__ = ["DEMO_SCHEMA", "PacedTier", "paced"]

DEMO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}


class _PacedMeter:
    """A meter that spends ``token_s`` seconds on every output token before charging it."""

    def __init__(self, inner: Meter, token_s: float) -> None:
        self._inner = inner
        self._token_s = token_s

    @property
    def max_out(self) -> int:
        return self._inner.max_out

    def check(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        self._inner.check(tokens_in=tokens_in, tokens_out=tokens_out)

    def charge(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        if tokens_out:
            time.sleep(self._token_s * tokens_out)
        self._inner.charge(tokens_in=tokens_in, tokens_out=tokens_out)


class PacedTier(ScriptedTier):
    """A scripted black-box tier answering every request with ``{"answer": "<words>"}``:
    ``tokens`` output tokens (the JSON counts as words), ``token_s`` seconds each."""

    def __init__(self, name: str = "local", *, tokens: int = 20, token_s: float = 0.05) -> None:
        words = " ".join(f"w{i}" for i in range(max(tokens - 1, 1)))
        super().__init__(name, [f'{{"answer": "{words}"}}'], repeat_last=True, model="paced")
        self.token_s = token_s

    def complete(self, request: TierRequest, meter: Meter) -> TierOutput:
        return super().complete(request, _PacedMeter(meter, self.token_s))


def paced(rt: Coordinator) -> None:
    """A worker setup: the runtime's cascade becomes one :class:`PacedTier` named ``local``
    (``COREASON_DEMO_TOKENS``, default 20; ``COREASON_DEMO_TOKEN_S``, default 0.05)."""
    tokens = int(os.environ.get("COREASON_DEMO_TOKENS", "20"))
    token_s = float(os.environ.get("COREASON_DEMO_TOKEN_S", "0.05"))
    rt.router.set_tiers([PacedTier("local", tokens=tokens, token_s=token_s)])

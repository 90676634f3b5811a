"""ScriptedTier: a tier that replays scripted outputs, the test double shipped with the seam.

:class:`ScriptedTier` is a black-box tier (the router hands it the OpenAI strict form);
:class:`ScriptedSteerableTier` stands in for a grammar-constrained one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from coreason_runtime._controls import ControlledMeter
from coreason_runtime._events import EventBus, EventType
from coreason_runtime._exceptions import CoreasonError
from coreason_runtime.tensor._schema import CompiledSchema
from coreason_runtime.tensor._types import (
    BaseTier,
    BlackBoxTier,
    Messages,
    Meter,
    SteerableTier,
    TierOutput,
    TierRequest,
)

__all__ = ["ScriptedSteerableTier", "ScriptedTier"]

Step = str | CoreasonError | Callable[[TierRequest], str]


class _Scripted(BaseTier):
    """Answers each call with the next scripted step: a string (the output), an exception (to
    raise), or a function of the request. Tokens are counted as whitespace-separated words and
    charged to the meter like a real tier (passing the request's controls at every token), so
    budgets, pauses and aborts behave as with a model.

    Parameters
    ----------
    name:
        The tier's name in results and ledgers (``"local"``, ``"oracle"`` ...).
    steps:
        Consumed in order; the last one repeats when ``repeat_last`` is true.
    bus:
        When given, the output streams there as ``tokens.batch`` events, one per token, as a
        real tier's does (``rt.router.stream`` and ``%%coreason ask`` show it growing).
    delay:
        Seconds per output token, to stand in for a decoder's pace.
    """

    def __init__(
        self,
        name: str,
        steps: Iterable[Step],
        *,
        repeat_last: bool = False,
        model: str = "scripted",
        bus: EventBus | None = None,
        delay: float = 0.0,
    ) -> None:
        self.name = name
        self.model = model
        self.bus = bus
        self.delay = delay
        self._steps = list(steps)
        self._repeat_last = repeat_last
        self._lock = threading.Lock()
        self.requests: list[TierRequest] = []

    @staticmethod
    def count_tokens(text: str) -> int:
        return max(len(text.split()), 1)

    @property
    def model_name(self) -> str:
        return self.model

    def count_prompt(self, messages: Messages, compiled: CompiledSchema | None = None) -> int:
        return sum(self.count_tokens(m["content"]) for m in messages)

    def complete(self, request: TierRequest, meter: Meter) -> TierOutput:
        if isinstance(self, SteerableTier):  # the router controls black boxes' meters itself
            meter = ControlledMeter(meter, request.ticket)
        with self._lock:
            self.requests.append(request)
            if not self._steps:
                msg = f"scripted tier {self.name!r} has no steps left"
                raise CoreasonError(msg, tier=self.name)
            step = (
                self._steps[0]
                if (self._repeat_last and len(self._steps) == 1)
                else self._steps.pop(0)
            )
        tokens_in = self.count_prompt(request.messages)
        meter.charge(tokens_in=tokens_in)
        if isinstance(step, CoreasonError):
            raise step
        text = step(request) if callable(step) else step
        pieces = text.split(" ")
        produced: list[str] = []
        for piece in pieces[: request.max_tokens]:
            if self.delay:
                time.sleep(self.delay)
            meter.check(tokens_out=1)
            meter.charge(tokens_out=1)
            produced.append(piece)
            if self.bus is not None:
                self.bus.emit(
                    EventType.TOKENS,
                    workflow_id=request.workflow_id,
                    source=self.name,
                    tier=self.name,
                    delta=piece if len(produced) == 1 else f" {piece}",
                    tokens_out=1,
                    total_out=len(produced),
                )
        out = " ".join(produced)
        finish = "stop" if len(produced) == len(pieces) else "length"
        return TierOutput(
            text=out,
            tokens_in=tokens_in,
            tokens_out=len(produced),
            model=self.model,
            finish_reason=finish,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} steps_left={len(self._steps)}>"


class ScriptedTier(_Scripted, BlackBoxTier):
    """A scripted black-box tier: the router hands it the OpenAI strict form."""


class ScriptedSteerableTier(_Scripted, SteerableTier):
    """A scripted tier the router treats as grammar-constrained (it gets the grammar)."""

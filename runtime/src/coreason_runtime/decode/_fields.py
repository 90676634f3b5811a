"""What a decode session is made of: its states, token origins, and the fields its parts share.

:class:`~coreason_runtime.decode.DecodeSession` is split by concern into parts that each see
the same fields (declared once here): the token loop (``_stepping``), edits and checkpoints
(``_edit``), and the session itself with its controls (``_session``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache

    from coreason_runtime._events import EventType
    from coreason_runtime.decode._closing import Closing
    from coreason_runtime.decode._engine import DecodeEngine
    from coreason_runtime.decode._grammar import GrammarMask
    from coreason_runtime.decode._sampler import Sampler
    from coreason_runtime.decode._store import BlockStore, Held
    from coreason_runtime.tensor._types import Meter

__all__ = ["Origin", "SessionFields", "SessionState", "Step", "Timings"]

TOKEN, INTERRUPTED, FINISHED, PREFILLED = "token", "interrupted", "finished", "prefilled"


class SessionState(StrEnum):
    """Where a session is: not started, runnable, parked, or done."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"


class Origin(StrEnum):
    """Who put a token in the context."""

    PROMPT = "prompt"
    GENERATED = "generated"
    INJECTED = "injected"
    REPAIRED = "repaired"


class Interrupted(Exception):
    """Raised at a layer boundary to abandon a forward pass (a pause, a preemption, a cancel)."""


class DeadlinePassed(Exception):
    """Raised at a layer boundary once the session's deadline has passed."""


@dataclass(frozen=True)
class Step:
    """One line of a session's output, with absolute token offsets ``[start, end)``."""

    index: int
    start: int
    end: int
    text: str
    char_start: int
    char_end: int


@dataclass
class Timings:
    """Seconds a session spent in each part of its steps (per-token breakdowns), and how many
    forward passes ran with full-precision copies (per-token-group precision)."""

    prefill: float = 0.0
    forward: float = 0.0
    mask: float = 0.0
    sample: float = 0.0
    high_steps: int = 0


class SessionFields:
    """The state every part of a session reads and writes (set by ``DecodeSession``)."""

    engine: DecodeEngine
    id: str
    workflow_id: str | None
    sampler: Sampler
    max_new_tokens: int
    min_new_tokens: int
    stop: tuple[str, ...]
    pause_on: tuple[str, ...]
    meter: Meter | None
    deadline: float | None
    on_token: Callable[[Any], None] | None
    prompt_len: int
    cache: DynamicCache
    generator: torch.Generator
    grammar: GrammarMask | None
    closing: Closing | None
    next_logits: torch.Tensor | None
    n_generated: int
    finish_reason: str | None
    timings: Timings
    kv: BlockStore | None
    _kv_held: Held | None
    step_entropy: float = 0.0  # of the last sampled distribution, while token groups are on
    _tokens: list[int]
    _origins: list[Origin]
    _kv_len: int
    _prefilled: bool
    _prompt_charged: bool
    _state: SessionState
    _cv: threading.Condition
    _executing: bool
    _pause_requested: bool
    _pause_t0: float
    _interrupt: threading.Event

    @property
    def prefilled(self) -> bool:
        """The prompt has been through the model (the session has KV and logits)."""
        return self._prefilled

    if TYPE_CHECKING:  # defined by the session's parts; declared here for the others

        def emit(self, event: EventType, /, **data: Any) -> None: ...

        def layer_check(self) -> Callable[[], None]: ...

        def _finish(self, reason: str) -> str: ...

        def _kv_ready(self) -> None: ...

        def _kv_forget(self) -> None: ...

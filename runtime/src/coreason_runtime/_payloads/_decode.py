"""Payloads of decode sessions: lifecycle, injections, span repairs, thunks, verifiers.

Every one names its ``session``; token offsets are into that session's sequence.
"""

from __future__ import annotations

from coreason_runtime._payloads._base import EventPayload

__all__ = [
    "DecodeCheckpointed",
    "DecodeFinished",
    "DecodeInjected",
    "DecodePaused",
    "DecodeRestored",
    "DecodeResumed",
    "DecodeStarted",
    "SpanRepaired",
    "ThunkDeclared",
    "ThunkForced",
    "VerifierFailed",
]


class DecodeStarted(EventPayload):
    """``decode.started``: a session began decoding after ``prompt_tokens`` of prompt, on a
    model whose weights run in ``precision`` (``fp32``, or a summary of its precision map)."""

    session: str
    offset: int
    prompt_tokens: int
    priority: int
    precision: str


class DecodePaused(EventPayload):
    """``decode.paused``: a session stopped at ``offset``.

    ``reason`` is ``"pause"`` (asked for; ``latency_ms`` from the request to the stop) or
    ``"preempted"`` (the engine gave its turn to session ``by``, when it knows which);
    ``in_forward`` says it stopped at a layer boundary inside a forward pass.
    """

    session: str
    offset: int
    reason: str
    in_forward: bool
    by: str | None = None
    latency_ms: float | None = None


class DecodeResumed(EventPayload):
    """``decode.resumed``: a paused session goes on (``reason`` "rescheduled" by the engine;
    None when resumed on request)."""

    session: str
    offset: int
    reason: str | None = None


class DecodeInjected(EventPayload):
    """``decode.injected``: ``n_tokens`` were spliced in at ``[start, end)`` and prefilled."""

    session: str
    start: int
    end: int
    n_tokens: int
    prefill_ms: float


class DecodeFinished(EventPayload):
    """``decode.finished``: a session ended (``reason``: eos, length, stop, …)."""

    session: str
    offset: int
    reason: str | None
    n_generated: int


class DecodeCheckpointed(EventPayload):
    """``decode.checkpointed``: a session saved a checkpoint at ``offset``."""

    session: str
    offset: int


class DecodeRestored(EventPayload):
    """``decode.restored``: a session went back to its checkpoint at ``offset``."""

    session: str
    offset: int


class SpanRepaired(EventPayload):
    """``decode.span_repaired``: tokens ``[start, old_end)`` were regenerated as
    ``[start, new_end)``."""

    session: str
    start: int
    old_end: int
    new_end: int
    old_text: str
    new_text: str
    decoded_tokens: int
    prefilled_tokens: int
    candidates: int
    accepted: bool
    reason: str | None  # what asked for the repair (a verifier, a thunk), if the caller said


class ThunkDeclared(EventPayload):
    """``thunk.declared``: a deferred step ``⟦name(args)⟧`` appeared at ``[start, end)``."""

    session: str
    name: str
    args: str
    start: int
    end: int
    cost: int


class ThunkForced(EventPayload):
    """``thunk.forced``: a thunk's placeholder ``[start, old_end)`` became its
    ``expansion``, now ending at ``new_end``."""

    session: str
    name: str
    start: int
    old_end: int
    new_end: int
    cost: int
    expansion: str


class VerifierFailed(EventPayload):
    """``verifier.failed``: ``verifier`` rejected step ``step``; its claim is at tokens
    ``[start, end)``."""

    session: str
    verifier: str
    step: int
    kind: str
    claim: str
    expected: str | None
    message: str
    start: int
    end: int

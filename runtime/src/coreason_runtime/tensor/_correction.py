"""The self-correction policy: which failures are retried, and how the next request is built.

The retry *policy* (tenacity: at most k_max attempts per tier, only for retryable failures) is
kept apart from the *repair* that builds the next request. Every failed attempt is first
classified (:func:`classify`: truncated, invalid JSON, schema violation, verifier failure,
timeout, dead end, ...); :func:`next_try` then builds the next request from the class, a pure
function dispatched by a dict: a truncated answer gets more room when Ω allows, else an
instruction to answer shorter, else the tier is left; a rejected answer is fed back with the
exact error (Prompt_{k+1} = Prompt_k + Traceback_k); an output that repeats an earlier failed
one of the tier leaves it (the same failure is never paid for again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_none

from coreason_runtime._exceptions import (
    BudgetExceededError,
    CoreasonError,
    GrammarDeadEndError,
    ProtocolError,
    RateLimitError,
    SchemaError,
    TierTimeoutError,
    TierUnavailableError,
    ValidationFailure,
    VerifierError,
    WorkflowAbortedError,
)
from coreason_runtime.tensor._types import FailureKind, TierOutput

__all__ = [
    "REPAIRS",
    "Outcome",
    "Try",
    "classify",
    "is_retryable",
    "next_try",
    "reask",
    "retry_policy",
]

Messages = list[dict[str, str]]
Repair = Callable[[Messages, CoreasonError], Messages]

_MAX_FED_BACK = 2000  # characters of an error or an output fed back to the model


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_FED_BACK else text[:_MAX_FED_BACK] + " …[truncated]"


def reask_validation(messages: Messages, error: CoreasonError) -> Messages:
    """Append the rejected output and the exact validation error, and ask again."""
    output = error.output if isinstance(error, ValidationFailure) else ""
    return [
        *messages,
        {"role": "assistant", "content": _clip(output)},
        {
            "role": "user",
            "content": (
                "That answer failed validation with this error:\n"
                f"{_clip(error.message)}\n"
                "Return only a corrected JSON value that satisfies the schema."
            ),
        },
    ]


def reask_unchanged(messages: Messages, error: CoreasonError) -> Messages:
    """Transport failures say nothing about the answer: ask the same question again."""
    return list(messages)


REPAIRS: dict[type[CoreasonError], Repair] = {
    ValidationFailure: reask_validation,
    ProtocolError: reask_unchanged,
    RateLimitError: reask_unchanged,
}


def reask(messages: Messages, error: CoreasonError) -> Messages:
    """The next conversation after ``error``, by the most specific repair registered."""
    for cls in type(error).__mro__:
        repair = REPAIRS.get(cls)  # type: ignore[arg-type]
        if repair is not None:
            return repair(messages, error)
    return list(messages)


# --- classifying a failure ----------------------------------------------------------------

_KINDS: dict[type[CoreasonError], FailureKind] = {
    BudgetExceededError: FailureKind.BUDGET,
    WorkflowAbortedError: FailureKind.ABORTED,
    TierTimeoutError: FailureKind.TIMEOUT,
    GrammarDeadEndError: FailureKind.DEAD_END,
    VerifierError: FailureKind.VERIFIER_FAILURE,
    ProtocolError: FailureKind.TRANSPORT,
    RateLimitError: FailureKind.TRANSPORT,
    TierUnavailableError: FailureKind.TRANSPORT,
    SchemaError: FailureKind.COMPILE,
}


def classify(error: CoreasonError, output: TierOutput | None = None) -> FailureKind:
    """What kind of failure ``error`` is, given the tier's ``output`` when there was one.

    An output that ran to its token limit without ending is *truncated*, whatever the
    validation said about the half-value; a validation failure is otherwise *invalid JSON*
    or a *schema violation*; other errors are classified by type (the most specific
    registered in ``_KINDS``), anything unknown as a *crash*.
    """
    if isinstance(error, ValidationFailure):
        if output is not None and output.finish_reason == "length":
            return FailureKind.TRUNCATED
        return FailureKind.INVALID_JSON if error.invalid_json else FailureKind.SCHEMA_VIOLATION
    for cls in type(error).__mro__:
        kind = _KINDS.get(cls)  # type: ignore[call-overload]
        if kind is not None:
            return kind
    return FailureKind.CRASH


# --- the next try --------------------------------------------------------------------------

SHORTER = (
    "Your previous answer was cut off after {limit} tokens before the JSON value was complete. "
    "Answer again with a shorter JSON value that satisfies the schema: keep strings brief and "
    "arrays to the items needed."
)


@dataclass(frozen=True)
class Try:
    """One attempt's arguments: the conversation and the output limit."""

    messages: Messages
    max_tokens: int
    asked_shorter: bool = False


@dataclass(frozen=True)
class Outcome:
    """What a failed attempt tells the policy.

    ``room`` is how many output tokens Ω can still fund after the next prompt (``None``:
    no ceiling); ``cap`` the most ``max_tokens`` may grow to; ``repeat_of`` the earlier
    failed attempt of the tier whose output this one repeated token for token.
    """

    kind: FailureKind
    error: CoreasonError
    room: int | None = None
    cap: int = 0
    repeat_of: int | None = None


def _after_truncation(last: Try, out: Outcome) -> Try | None:
    grown = min(2 * last.max_tokens, out.cap, out.room if out.room is not None else out.cap)
    if grown > last.max_tokens:  # more room, the same question
        return replace(last, max_tokens=grown)
    if not last.asked_shorter:
        ask = {"role": "user", "content": SHORTER.format(limit=last.max_tokens)}
        return replace(last, messages=[*last.messages, ask], asked_shorter=True)
    return None  # neither more room nor a shorter answer: escalate


def _after_rejection(last: Try, out: Outcome) -> Try | None:
    return replace(last, messages=reask(last.messages, out.error))


def _unchanged(last: Try, out: Outcome) -> Try | None:
    return last


NEXT: dict[FailureKind, Callable[[Try, Outcome], Try | None]] = {
    FailureKind.TRUNCATED: _after_truncation,
    FailureKind.INVALID_JSON: _after_rejection,
    FailureKind.SCHEMA_VIOLATION: _after_rejection,
    FailureKind.VERIFIER_FAILURE: _after_rejection,
    FailureKind.TRANSPORT: _unchanged,
}


def next_try(last: Try, outcome: Outcome) -> Try | None:
    """The next attempt's arguments after a failure, or ``None`` to leave the tier.

    An output that repeats an earlier failed one leaves the tier whatever its class: the same
    tokens came back although the request had changed (the error fed back, a higher
    temperature and a fresh seed, or more room / "answer shorter" after a truncation, e.g. a
    server capping its output below what was asked), so nothing distinct is left to ask, and
    another try would pay for the same failure again.
    """
    if outcome.repeat_of is not None:
        return None
    step = NEXT.get(outcome.kind)
    return step(last, outcome) if step is not None else None


def is_retryable(exc: BaseException) -> bool:
    """Retry within a tier only what another try can fix; a ceiling is never retried, and
    deterministic impossibilities (schema cannot compile, grammar dead end, auth) escalate."""
    if isinstance(exc, BudgetExceededError):
        return False
    return isinstance(exc, CoreasonError) and exc.retryable


def retry_policy(max_attempts: int, go_on: Callable[[], bool] = lambda: True) -> Retrying:
    """At most ``max_attempts`` tries, retrying only :func:`is_retryable` failures, and only
    while ``go_on()`` (the correction policy has a next try)."""
    return Retrying(
        stop=stop_after_attempt(max_attempts),
        retry=retry_if_exception(lambda e: is_retryable(e) and go_on()),
        wait=wait_none(),
        reraise=True,
    )

"""The self-correction policy: which failures are retried, and how the next request is built.

The retry *policy* (tenacity: at most k_max attempts per tier, only for retryable failures) is
kept apart from the *repair* that builds the next request. A repair is a pure function from the
conversation and the failure to the next conversation (Prompt_{k+1} = Prompt_k + Traceback_k),
dispatched by the failure's type.
"""

from __future__ import annotations

from collections.abc import Callable

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_none

from coreason_runtime._exceptions import (
    BudgetExceededError,
    CoreasonError,
    ProtocolError,
    RateLimitError,
    ValidationFailure,
)

__all__ = ["REPAIRS", "is_retryable", "reask", "retry_policy"]

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


def is_retryable(exc: BaseException) -> bool:
    """Retry within a tier only what another try can fix; a ceiling is never retried, and
    deterministic impossibilities (schema cannot compile, grammar dead end, auth) escalate."""
    if isinstance(exc, BudgetExceededError):
        return False
    return isinstance(exc, CoreasonError) and exc.retryable


def retry_policy(max_attempts: int) -> Retrying:
    """At most ``max_attempts`` tries, retrying only :func:`is_retryable` failures."""
    return Retrying(
        stop=stop_after_attempt(max_attempts),
        retry=retry_if_exception(is_retryable),
        wait=wait_none(),
        reraise=True,
    )

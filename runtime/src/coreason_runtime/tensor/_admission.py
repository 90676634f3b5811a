"""What a request must pass before anything is reserved: its arguments, a paused workflow, its
verifiers read into a policy. Shared by :meth:`TensorRouter.generate` and ``dry_run``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from coreason_runtime._exceptions import RequestError

if TYPE_CHECKING:
    from coreason_runtime._controls import Ticket
    from coreason_runtime.verify import VerifyPolicy

__all__ = ["checked_request", "hold_while_paused", "policy_of"]

logger = logging.getLogger("coreason_runtime.router")


def checked_request(prompt: object, max_tokens: object, default_max_tokens: int) -> int:
    """The request's ``max_tokens`` (``default_max_tokens`` filled in); ``RequestError`` for an
    empty prompt or a ``max_tokens`` that is not a positive integer."""
    if not isinstance(prompt, str) or not prompt.strip():
        msg = "prompt must be a non-empty string"
        raise RequestError(msg)
    max_tokens = default_max_tokens if max_tokens is None else max_tokens
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        msg = f"max_tokens must be a positive integer, got {max_tokens!r}"
        raise RequestError(msg)
    return max_tokens


def hold_while_paused(ticket: Ticket, timeout: float) -> None:
    """Hold a request that finds its workflow paused, before anything is reserved: say so, and
    wait at most ``timeout`` for a resume (then :class:`WorkflowPausedError`)."""
    if ticket.held:
        wf = ticket.workflow_id
        bound = "without limit" if timeout == float("inf") else f"at most {timeout:g} s"
        logger.warning(
            "workflow %r is %s: this request waits for rt.controls.resume(%r) (%s; "
            "nothing is reserved meanwhile)",
            wf,
            ticket.state.value,
            wf,
            bound,
        )
    ticket.checkpoint(timeout)


def policy_of(verify: Any) -> VerifyPolicy | None:
    """``generate``'s ``verify=`` as a policy (None: the request names no verifier)."""
    if verify is None:
        return None
    from coreason_runtime.verify import VerifyPolicy

    return VerifyPolicy.of(verify)

"""A structured request as a Temporal workflow: it answers, suspends at its ceiling, or yields.

The workflow itself holds no model and no ledger; it runs activities (``coreason.generate`` on
whichever worker takes it, ``coreason.resolve`` for a human's answer,
``coreason.adjust_ceiling`` for the budget) and waits on signals. Everything here runs in
Temporal's deterministic sandbox: standard library and ``temporalio`` only.

A request that crosses its workflow's ceiling Ω is **suspended**, not failed: the workflow
waits, durably (for days if need be, across worker and server restarts), for a
``raise_ceiling`` or ``top_up`` signal, after which it asks again, or for a human ``answer``.
A request every tier failed **yields**: it waits for a human ``answer``. The ``state`` query
says which, and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

__all__ = [
    "TASK_QUEUE",
    "AskInput",
    "AskOutcome",
    "BudgetChange",
    "StructuredRequestWorkflow",
    "Suspension",
]

TASK_QUEUE = "coreason"

# A request's activity may run for hours (a long decode, a long pause); a dead worker is
# noticed by its missing heartbeats instead, and the activity is retried on another worker.
GENERATE_TIMEOUT = timedelta(hours=24)


@dataclass
class AskInput:
    """What a workflow is asked: a JSON schema (or ``"module:Model"``) and a prompt.

    ``heartbeat_timeout_s``: how long a worker may be silent before its activity is retried
    on another worker (it heartbeats every third of that).
    """

    schema: dict[str, Any] | str
    prompt: str
    workflow_id: str
    tiers: list[str] | None = None
    max_tokens: int | None = None
    seed: int | None = None
    heartbeat_timeout_s: float = 10.0


@dataclass
class Suspension:
    """Why a request stopped at its ceiling: the ledger then, and what it asked for."""

    reason: str
    ceiling: float | None
    spent: float
    needed: float | None = None
    tier: str | None = None
    worker: str | None = None


@dataclass
class AskOutcome:
    """The answer (or the yield, suspension, abort) with its provenance; JSON-safe.

    ``status``: ``"answered"``, ``"yielded"`` (every tier failed), ``"suspended"`` (the
    ceiling was reached) or ``"aborted"`` (an operator aborted the workflow).
    """

    status: str
    value: Any = None
    tier: str | None = None
    cost: float = 0.0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    suspension: Suspension | None = None
    worker: str | None = None


@dataclass
class BudgetChange:
    """Change ``workflow_id``'s ceiling for suspended request ``request_id``: ``by`` a
    ``top_up`` (add ``amount``) or a ``raise_ceiling`` (to ``amount``, never lower).
    ``change_id`` names the change, so it is applied once however often it is run."""

    workflow_id: str
    request_id: str
    by: str
    amount: float
    change_id: str


def _retry(attempts: int) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=timedelta(milliseconds=200),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=2),
        maximum_attempts=attempts,
    )


@workflow.defn(name="coreason.StructuredRequest")
class StructuredRequestWorkflow:
    """Ask the router; suspend at the ceiling until it is raised; on a yield, wait for a human."""

    def __init__(self) -> None:
        self._answers: list[Any] = []
        self._raises: list[tuple[str, float]] = []
        self._state = "running"
        self._last_error: str | None = None
        self._suspension: Suspension | None = None
        self._generations = 0
        self._changes = 0
        self._cost = 0.0
        self._attempts: list[dict[str, Any]] = []

    @workflow.run
    async def run(self, req: AskInput) -> AskOutcome:
        while True:
            outcome = await self._generate(req)
            if outcome.status in ("answered", "aborted"):
                self._state = outcome.status
                return self._total(outcome)
            if outcome.status == "yielded":
                self._state = "waiting_for_human"
                return await self._human(req)
            self._state, self._suspension = "suspended", outcome.suspension
            await workflow.wait_condition(lambda: bool(self._answers or self._raises))
            if self._answers:  # a human answers instead of paying for another try
                return await self._human(req)
            await self._raise_ceiling(req)
            self._state, self._suspension = "running", None

    async def _generate(self, req: AskInput) -> AskOutcome:
        self._generations += 1
        outcome: AskOutcome = await workflow.execute_activity(
            "coreason.generate",
            req,
            result_type=AskOutcome,
            start_to_close_timeout=GENERATE_TIMEOUT,
            heartbeat_timeout=timedelta(seconds=req.heartbeat_timeout_s),
            retry_policy=_retry(attempts=20),
        )
        self._cost += outcome.cost
        self._attempts += outcome.attempts
        return outcome

    async def _raise_ceiling(self, req: AskInput) -> None:
        """Apply the first waiting ``raise_ceiling`` / ``top_up`` (once, even if retried)."""
        by, amount = self._raises.pop(0)
        self._changes += 1
        request_id = workflow.info().workflow_id
        change = BudgetChange(
            req.workflow_id, request_id, by, amount, f"{request_id}:{self._changes}"
        )
        await workflow.execute_activity(
            "coreason.adjust_ceiling",
            change,
            start_to_close_timeout=timedelta(seconds=90),
            retry_policy=_retry(attempts=10),
        )

    async def _human(self, req: AskInput) -> AskOutcome:
        """Wait for answers until one validates against the schema (tier ``"human"``)."""
        while True:
            await workflow.wait_condition(lambda: bool(self._answers))
            answer = self._answers.pop(0)
            try:
                resolved: AskOutcome = await workflow.execute_activity(
                    "coreason.resolve",
                    args=[req, answer],
                    result_type=AskOutcome,
                    start_to_close_timeout=timedelta(minutes=1),
                    retry_policy=RetryPolicy(maximum_attempts=1),
                )
            except Exception as e:  # an invalid answer: say why and keep waiting
                self._last_error = str(getattr(e, "cause", None) or e)
                continue
            self._state, self._suspension = "answered", None
            self._attempts.append({"tier": "human", "index": 1, "ok": True})
            return self._total(resolved)

    def _total(self, outcome: AskOutcome) -> AskOutcome:
        """``outcome`` with the cost and attempts of every generation of this request."""
        outcome.cost = self._cost
        outcome.attempts = list(self._attempts)
        return outcome

    @workflow.signal(name="answer")
    def answer(self, value: Any) -> None:
        """A human's answer (validated by ``coreason.resolve``; an invalid one is refused)."""
        self._answers.append(value)

    @workflow.signal(name="raise_ceiling")
    def raise_ceiling(self, ceiling: float) -> None:
        """Raise the workflow's ceiling Ω to ``ceiling`` (never lowers it) and ask again."""
        self._raises.append(("raise_ceiling", float(ceiling)))

    @workflow.signal(name="top_up")
    def top_up(self, amount: float) -> None:
        """Add ``amount`` to the workflow's ceiling Ω and ask again."""
        self._raises.append(("top_up", float(amount)))

    @workflow.query(name="state")
    def state(self) -> dict[str, Any]:
        """``state`` (running, suspended, waiting_for_human, answered, aborted), the last
        refused answer's error, the suspension (ledger and need), generations, C so far."""
        suspension = self._suspension
        return {
            "state": self._state,
            "last_error": self._last_error,
            "suspension": None if suspension is None else vars(suspension).copy(),
            "generations": self._generations,
            "cost": self._cost,
        }

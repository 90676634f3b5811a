"""Every error coreason raises, in one place, each carrying structured fields.

The hierarchy::

    CoreasonError (Exception)
    ├── ConfigurationError (+ValueError) ......... bad settings, missing optional extra
    │   └── MissingExtraError (+ImportError)
    ├── EventPayloadError (+TypeError) ........... an event emitted with unknown or missing fields
    ├── SchemaError (+ValueError) ................ not a schema, invalid schema
    │   ├── SchemaCompileError ................... no grammar can be built (deterministic)
    │   ├── SchemaCompileTimeout (+TimeoutError)  compile took longer than allowed
    │   └── OracleSchemaLimitError ............... schema breaks OpenAI strict-mode limits
    ├── RequestError (+ValueError) ............... empty prompt, bad parameters
    │   ├── RequestTooLargeError ................. over a size limit (body, schema, prompt)
    │   │   └── ContextLengthError ............... prompt + output exceed the model's context
    │   ├── InvalidBodyError ..................... a served request that is not UTF-8 JSON
    │   └── ModelNotFoundError (+LookupError) .... a served request names another model
    ├── ValidationFailure (+ValueError) .......... output parsed but failed validation (retryable)
    │   └── VerificationFailure .................. it validated, but a verifier rejected a field
    ├── BudgetError
    │   ├── BudgetExceededError .................. ceiling crossed: bypasses every retry
    │   ├── UnknownWorkflowError (+LookupError)
    │   ├── InvalidCeilingError (+ValueError)
    │   └── LedgerBackendError ................... the ledger store failed; nothing was charged
    ├── TierError
    │   ├── TierUnavailableError (+ConnectionError) unreachable server, no model
    │   ├── AuthenticationError (+PermissionError)  401 / 403
    │   ├── RateLimitError ....................... 429 after honouring Retry-After
    │   ├── ProtocolError ........................ malformed SSE, stream cut mid-way
    │   ├── TierTimeoutError (+TimeoutError)
    │   ├── ServerBusyError ...................... a bounded queue is full: retry after a while
    │   └── GrammarDeadEndError .................. the constrained decoder had no legal token
    ├── EpistemicYieldError ...................... every tier failed: a human must answer
    ├── WorkflowAbortedError ..................... an operator aborted the workflow: no retry,
    │   │                                          no escalation, exactly what ran is charged
    │   └── ClientDisconnectedError .............. a `coreason serve` client hung up mid-request
    ├── WorkflowPausedError (+TimeoutError) ...... still paused when the request's wait ran out
    ├── DecodeError .............................. decode sessions, span repair, thunks
    │   ├── SessionStateError .................... resume without pause, inject when finished
    │   ├── SpanError (+ValueError) .............. span out of range or over a special token
    │   ├── VerifierError ........................ a verifier raised, returned garbage, named a
    │   │   │                                      field the value lacks: a bug, never retried
    │   │   └── VerifierTimeoutError (+TimeoutError) a verifier did not return in time
    │   └── ThunkError (+LookupError) ............ unknown or cyclic thunk, expander failed
    ├── PrecisionError (+ValueError) ............. per-operator precision maps
    │   ├── PrecisionBudgetError ................. a map breaks its quality budget: refused
    │   └── PrecisionMapError .................... a map for other weights, or unreadable
    ├── SchedulerError ........................... DAGs, critical-path and slack schedulers
    │   ├── InvalidDAGError ...................... malformed DAG or task (not a ValueError:
    │   │   │                                      raised inside pydantic validators, unwrapped)
    │   │   ├── DAGCycleError
    │   │   ├── UnknownDependencyError (+LookupError)
    │   │   └── InvalidEstimateError ............. negative ETA/budget, p_succ outside [0, 1]
    │   ├── WorkerDiedError ...................... a worker process vanished or was killed
    │   ├── TaskBudgetExceededError .............. a task or DAG crossed its wall/FLOP budget
    │   ├── TaskFailedError ...................... a task failed every attempt
    │   └── ConstraintError (+ValueError) ........ a constraint could not report a slack
    ├── TransactionError ......................... two-phase tool calls, what-if gates
    │   ├── PreconditionError (+ValueError) ...... prepare() refused: inputs or bounds wrong
    │   ├── NoConsumerError (+ValueError) ........ a consumer list naming nothing
    │   ├── TransactionStateError ................ operation out of order
    │   │   └── TransactionAbortedError .......... commit after abort
    │   ├── UnknownTransactionError (+LookupError)
    │   ├── ToolRunError ......................... the heavy run exited non-zero
    │   └── AuditLogError ........................ the durable log could not be written
    ├── CacheError ............................... canonical forms, stores, checkpoints
    │   ├── ExpressionParseError (+ValueError) ... unparsable or forbidden expression text
    │   ├── ExpressionTooLargeError (+ValueError)  over a size limit
    │   ├── CacheBackendError (+ConnectionError) . store failed; nothing applied (retryable)
    │   └── CheckpointError ...................... chain cannot resume / out of restarts
    ├── SimulationError .......................... solvers, invariants, refinement
    │   ├── CFLViolationError (+ValueError) ...... a fixed step breaks the stability bound
    │   ├── DimensionError (+ValueError) ......... a PDE or parameter set mixes units
    │   ├── GridTooLargeError (+MemoryError) ..... the grid would not fit in memory
    │   ├── InvariantViolationError .............. an invariant failed and could not be repaired
    │   │   └── InvariantUnsatisfiableError ...... an invariant fails on the initial state
    │   └── NonFiniteStateError (+ArithmeticError) NaN/Inf appeared; state rolled back
    └── BanditError (+ValueError) ................ growing RBF network, bandits
        ├── ContextDimensionError ................ context of the wrong dimension
        ├── InvalidRewardError ................... NaN or infinite reward
        ├── InvalidBudgetError ................... negative growth budget
        └── InvalidArmError ...................... arm index out of range

Subsystems add their specific errors below the base of their section.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coreason_runtime.sched._state import DAGResult
    from coreason_runtime.tensor._schema import SchemaSpec
    from coreason_runtime.tensor._types import Attempt

__all__ = [
    "AuditLogError",
    "AuthenticationError",
    "BanditError",
    "BudgetError",
    "BudgetExceededError",
    "CFLViolationError",
    "CacheBackendError",
    "CacheError",
    "CheckpointError",
    "ClientDisconnectedError",
    "ConfigurationError",
    "ConstraintError",
    "ContextDimensionError",
    "ContextLengthError",
    "CoreasonError",
    "DAGCycleError",
    "DecodeError",
    "DimensionError",
    "EpistemicYieldError",
    "EventPayloadError",
    "ExpressionParseError",
    "ExpressionTooLargeError",
    "GrammarDeadEndError",
    "GridTooLargeError",
    "InvalidArmError",
    "InvalidBodyError",
    "InvalidBudgetError",
    "InvalidCeilingError",
    "InvalidDAGError",
    "InvalidEstimateError",
    "InvalidRewardError",
    "InvariantUnsatisfiableError",
    "InvariantViolationError",
    "LedgerBackendError",
    "MissingExtraError",
    "ModelNotFoundError",
    "NoConsumerError",
    "NonFiniteStateError",
    "OracleSchemaLimitError",
    "PrecisionBudgetError",
    "PrecisionError",
    "PrecisionMapError",
    "PreconditionError",
    "ProtocolError",
    "RateLimitError",
    "RequestError",
    "RequestTooLargeError",
    "SchedulerError",
    "SchemaCompileError",
    "SchemaCompileTimeout",
    "SchemaError",
    "ServerBusyError",
    "SessionStateError",
    "SimulationError",
    "SpanError",
    "TaskBudgetExceededError",
    "TaskFailedError",
    "ThunkError",
    "TierError",
    "TierTimeoutError",
    "TierUnavailableError",
    "ToolRunError",
    "TransactionAbortedError",
    "TransactionError",
    "TransactionStateError",
    "UnknownDependencyError",
    "UnknownTransactionError",
    "UnknownWorkflowError",
    "ValidationFailure",
    "VerificationFailure",
    "VerifierError",
    "VerifierTimeoutError",
    "WorkerDiedError",
    "WorkflowAbortedError",
    "WorkflowPausedError",
]


class CoreasonError(Exception):
    """Base of every coreason error.

    Structured fields are keyword-only and default to ``None``: ``workflow_id``, ``tier``,
    ``attempts`` (every attempt made so far), ``ledger`` (a snapshot of the workflow's
    ledger) and ``retryable``.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        workflow_id: str | None = None,
        tier: str | None = None,
        attempts: Sequence[Attempt] = (),
        ledger: Any = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.workflow_id = workflow_id
        self.tier = tier
        self.attempts: list[Attempt] = list(attempts)
        self.ledger = ledger
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message


# --- configuration -------------------------------------------------------------------------


class ConfigurationError(CoreasonError, ValueError):
    """A setting is missing or wrong."""


class MissingExtraError(ConfigurationError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        msg = (
            f"{package!r} is not installed; install it with "
            f"`pip install 'coreason-runtime[{extra}]'`"
        )
        super().__init__(msg)
        self.package = package
        self.extra = extra


# --- events --------------------------------------------------------------------------------


class EventPayloadError(CoreasonError, TypeError):
    """An event was emitted with fields its type's payload does not have, or without fields it
    needs: a programming error at the emit site, like calling a function with wrong keywords."""


# --- schemas and requests ------------------------------------------------------------------


class SchemaError(CoreasonError, ValueError):
    """The object given as a schema is not a pydantic model or a valid JSON schema."""


class SchemaCompileError(SchemaError):
    """No grammar can be compiled from the schema: deterministic, never retried."""


class SchemaCompileTimeout(SchemaError, TimeoutError):
    """Compiling the schema took longer than the compile timeout; the local tier is skipped."""

    retryable = False


class OracleSchemaLimitError(SchemaError):
    """The schema exceeds OpenAI strict-mode limits; checked before any spend."""


class RequestError(CoreasonError, ValueError):
    """A request's own parameters are wrong (empty prompt, max_tokens < 1, unknown tier)."""


class RequestTooLargeError(RequestError):
    """A request exceeds a size limit (body bytes, schema size, prompt tokens); nothing ran.

    ``limit`` and ``size`` are in the limit's own unit (bytes or tokens).
    """

    def __init__(
        self, message: str, *, limit: int | None = None, size: int | None = None, **fields: Any
    ) -> None:
        super().__init__(message, **fields)
        self.limit = limit
        self.size = size


class InvalidBodyError(RequestError):
    """A ``coreason serve`` request body is not UTF-8 JSON, or holds text that is not Unicode.

    ``code`` is the OpenAI-style error code: ``invalid_json`` or ``invalid_unicode``.
    """

    def __init__(self, message: str, *, code: str = "invalid_json", **fields: Any) -> None:
        super().__init__(message, **fields)
        self.code = code


class ModelNotFoundError(RequestError, LookupError):
    """A ``coreason serve`` request names a model the server does not serve."""


class ContextLengthError(RequestTooLargeError):
    """The prompt and the output asked for do not fit in the model's context window.

    Checked before prefill: no model time is spent on a request that cannot fit.
    """


class ValidationFailure(CoreasonError, ValueError):
    """A tier's output did not validate against the schema. Retryable with the error fed back.

    ``invalid_json`` is true when the output did not even parse as JSON.
    """

    retryable = True

    def __init__(
        self, message: str, *, output: str = "", invalid_json: bool = False, **fields: Any
    ) -> None:
        super().__init__(message, **fields)
        self.output = output
        self.invalid_json = invalid_json


class VerificationFailure(ValidationFailure):
    """The output validated, but a verifier rejected it (retryable with the failures fed back).

    ``failures`` are the verifier's findings (each names a field by JSON pointer, with a
    message); ``repairs`` the span repairs tried on the way, accepted or not.
    """

    def __init__(
        self,
        message: str,
        *,
        failures: Sequence[Any] = (),
        repairs: Sequence[Any] = (),
        **fields: Any,
    ) -> None:
        super().__init__(message, **fields)
        self.failures = list(failures)
        self.repairs = list(repairs)


# --- budgets -------------------------------------------------------------------------------


class BudgetError(CoreasonError):
    """Base of ledger and ceiling errors."""


class BudgetExceededError(BudgetError):
    """The workflow's ceiling Ω was crossed or would be crossed; bypasses every retry.

    ``ceiling``, ``spent`` and ``requested`` are the ledger's figures at the moment of refusal.
    """

    def __init__(
        self,
        message: str,
        *,
        ceiling: float | None = None,
        spent: float | None = None,
        requested: float | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message, **fields)
        self.ceiling = ceiling
        self.spent = spent
        self.requested = requested


class UnknownWorkflowError(BudgetError, LookupError):
    """No ledger exists for this workflow id."""


class InvalidCeilingError(BudgetError, ValueError):
    """A ceiling or weight that is not a positive finite number."""


class LedgerBackendError(BudgetError):
    """The ledger store failed (locked, unreachable); the operation was not applied."""

    retryable = True


# --- tiers ---------------------------------------------------------------------------------


class TierError(CoreasonError):
    """A tier failed to produce output for reasons other than validation."""


class TierUnavailableError(TierError, ConnectionError):
    """The tier cannot be reached or is not configured."""


class AuthenticationError(TierError, PermissionError):
    """The remote tier refused the credentials (401/403). The key itself is never shown."""


class RateLimitError(TierError):
    """The remote tier kept answering 429 after Retry-After was honoured."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.retry_after = retry_after


class ProtocolError(TierError):
    """The remote stream was malformed or cut off mid-way."""

    retryable = True


class TierTimeoutError(TierError, TimeoutError):
    """The tier did not finish within its timeout."""

    retryable = False


class ServerBusyError(TierError):
    """A bounded queue is full; ``retry_after`` seconds is a fair wait before retrying."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float = 1.0, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.retry_after = retry_after


class GrammarDeadEndError(TierError):
    """The grammar allowed no token the model could produce; escalate rather than retry."""


# --- the Oracle Circuit --------------------------------------------------------------------


class EpistemicYieldError(CoreasonError):
    """Every tier failed: the question goes to a human. ``attempts`` holds every attempt.

    ``schema`` is the JSON schema the answer must satisfy and ``prompt`` the question, so a
    form can be built from the error alone; ``spec`` is the router's compiled view of the
    schema (a :class:`~coreason_runtime.tensor.SchemaSpec`) when the router raised it;
    ``failures`` what the request's verifiers still rejected last (each names a field).
    """

    def __init__(
        self,
        message: str,
        *,
        schema: dict[str, Any] | None = None,
        prompt: str | None = None,
        spec: SchemaSpec | None = None,
        failures: Sequence[Any] = (),
        **fields: Any,
    ) -> None:
        super().__init__(message, **fields)
        self.schema = schema
        self.prompt = prompt
        self.spec = spec
        self.failures = list(failures)


# --- workflow controls ---------------------------------------------------------------------


class WorkflowAbortedError(CoreasonError):
    """The workflow was aborted by its operator (``rt.controls.abort``) while this ran.

    Not a :class:`BudgetExceededError`: an ``except BudgetExceededError`` never swallows an
    operator's abort. Like a crossed ceiling it bypasses every retry and escalation, and the
    ledger is charged exactly what was consumed before the abort landed.
    """


class ClientDisconnectedError(WorkflowAbortedError):
    """The client of a ``coreason serve`` request hung up: its decode stopped where it was."""


class WorkflowPausedError(CoreasonError, TimeoutError):
    """The workflow was paused (or preempted) and stayed so longer than the request would wait.

    Raised before anything was reserved; resume the workflow (``rt.controls.resume``) and ask
    again, or pass a longer ``pause_timeout``.
    """

    retryable = True


# --- decode engine -------------------------------------------------------------------------


class DecodeError(CoreasonError):
    """A decode session, span repair or thunk operation failed; the session is unchanged."""


class SessionStateError(DecodeError):
    """An operation that the session's state forbids: resume without pause, inject when done."""


class SpanError(DecodeError, ValueError):
    """A span is out of range, empty, or covers a special token; nothing was changed."""


class VerifierError(DecodeError):
    """A verifier did not judge: it raised (other than ``ValueError``), returned something that
    is not a list of failures, or named a field the value does not have. A bug in the
    verifier, not in the answer: never retried, never escalated. ``verifier`` names it."""

    def __init__(self, message: str, *, verifier: str | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.verifier = verifier


class VerifierTimeoutError(VerifierError, TimeoutError):
    """A verifier did not return within its time limit (it is abandoned, not killed)."""


class ThunkError(DecodeError, LookupError):
    """A thunk is unknown, cyclic, or its expander failed; nothing was spliced."""


# --- per-operator precision ----------------------------------------------------------------


class PrecisionError(CoreasonError, ValueError):
    """A per-operator precision map cannot be built, read or applied."""


class PrecisionBudgetError(PrecisionError):
    """A precision map breaks its quality budget, so it is refused.

    ``measured`` holds what validation found (perplexity increase, KL, greedy agreement) and
    ``budget`` the limits it was held to.
    """

    def __init__(
        self, message: str, *, measured: dict[str, float], budget: dict[str, float | None]
    ) -> None:
        super().__init__(message, tier="local")
        self.measured = dict(measured)
        self.budget = dict(budget)


class PrecisionMapError(PrecisionError):
    """A precision map names other weights or other modules, or cannot be read."""


# --- scheduling ----------------------------------------------------------------------------


class SchedulerError(CoreasonError):
    """Base of DAG, scheduling and worker errors.

    ``result`` is the scheduler's report of the whole DAG run (every task's state) when the
    error ends a run, else ``None``.
    """

    def __init__(self, message: str, *, result: DAGResult | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.result = result


class InvalidDAGError(SchedulerError):
    """A DAG or task description is malformed; nothing was scheduled.

    Deliberately not a ``ValueError``: it is raised inside pydantic validators, which would
    otherwise wrap it into a ``ValidationError`` and lose the type.
    """


class DAGCycleError(InvalidDAGError):
    """The dependencies form a cycle; ``cycle`` lists the task ids on it."""

    def __init__(self, message: str, *, cycle: Sequence[str] = (), **fields: Any) -> None:
        super().__init__(message, **fields)
        self.cycle = list(cycle)


class UnknownDependencyError(InvalidDAGError, LookupError):
    """A task depends on a task id the DAG does not hold."""


class InvalidEstimateError(InvalidDAGError):
    """A negative ETA or budget, or a success probability outside [0, 1]."""


class WorkerDiedError(SchedulerError):
    """A worker process died (killed by a signal or vanished) while running a task."""

    retryable = True


class TaskBudgetExceededError(SchedulerError):
    """A task or DAG crossed its wall-clock or FLOP budget and was stopped."""


class TaskFailedError(SchedulerError):
    """A task failed on every attempt it was allowed."""


class ConstraintError(SchedulerError, ValueError):
    """A hard constraint could not compute its slack (bad units, bad parameters)."""


# --- transactions --------------------------------------------------------------------------


class TransactionError(CoreasonError):
    """A two-phase tool call or what-if gate was used out of order or failed."""


class PreconditionError(TransactionError, ValueError):
    """prepare() refused the call: a precondition or a cost bound does not hold."""


class NoConsumerError(TransactionError, ValueError):
    """The consumer list names nothing, so no heavy run could ever be needed."""


class TransactionStateError(TransactionError):
    """The operation does not fit the transaction's state (e.g. commit of a failed call)."""


class TransactionAbortedError(TransactionStateError):
    """The transaction was aborted; it can no longer be committed."""


class UnknownTransactionError(TransactionError, LookupError):
    """No transaction with this id is in the audit log."""


class ToolRunError(TransactionError):
    """The heavy run exited with a non-zero status; ``returncode`` holds it."""

    def __init__(self, message: str, *, returncode: int | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.returncode = returncode


class AuditLogError(TransactionError):
    """The durable audit log could not be read or written; the decision was not applied."""

    retryable = True


# --- caches --------------------------------------------------------------------------------


class CacheError(CoreasonError):
    """Canonicalisation, a store, or a checkpoint failed."""


class ExpressionParseError(CacheError, ValueError):
    """SymPy cannot parse the text, or it uses syntax the guarded parser forbids."""


class ExpressionTooLargeError(CacheError, ValueError):
    """An expression (or a cache entry) is over a size limit; nothing was stored."""


class CacheBackendError(CacheError, ConnectionError):
    """The cache store failed (Redis gone, SQLite locked); the operation was not applied."""

    retryable = True


class CheckpointError(CacheError):
    """A proof chain could not be resumed or ran out of restarts."""


# --- simulation ----------------------------------------------------------------------------


class SimulationError(CoreasonError):
    """A solver, invariant or refinement step failed or was given unusable parameters."""


class CFLViolationError(SimulationError, ValueError):
    """A fixed time step exceeds the stability (CFL) bound at the start of a run."""


class DimensionError(SimulationError, ValueError):
    """The terms of a PDE, or a dimensionless group, do not have consistent units."""


class GridTooLargeError(SimulationError, MemoryError):
    """The requested grid would not fit in the memory allowed; nothing was allocated."""


class InvariantViolationError(SimulationError):
    """A declared invariant failed and refinement could not restore it.

    ``invariant`` names it, ``value`` is the measured residual, ``region`` the block's
    ``(x0, x1, y0, y1)`` when the failure is local, ``t`` the simulation time.
    """

    def __init__(
        self,
        message: str,
        *,
        invariant: str = "",
        value: float | None = None,
        region: tuple[float, float, float, float] | None = None,
        t: float | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message, **fields)
        self.invariant = invariant
        self.value = value
        self.region = region
        self.t = t


class InvariantUnsatisfiableError(InvariantViolationError):
    """An invariant does not hold even on the initial state, so it never can be enforced."""


class NonFiniteStateError(SimulationError, ArithmeticError):
    """NaN or Inf appeared in the state; the step was discarded and the last good state kept."""


# --- bandits -------------------------------------------------------------------------------


class BanditError(CoreasonError, ValueError):
    """The growing RBF network or a bandit was given unusable input."""


class ContextDimensionError(BanditError):
    """A context vector does not have the dimension the network or policy was built for."""


class InvalidRewardError(BanditError):
    """A reward is NaN or infinite; nothing was updated."""


class InvalidBudgetError(BanditError):
    """A growth budget (or an amount to lower it by) is negative or not an integer."""


class InvalidArmError(BanditError):
    """An arm index outside ``0 .. K-1``; nothing was updated."""

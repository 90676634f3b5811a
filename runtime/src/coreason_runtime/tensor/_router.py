"""The TensorRouter: local tier first, then the oracle, then the human (the Oracle Circuit)."""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from coreason_runtime._controls import Controls
from coreason_runtime._events import EventBus, EventType
from coreason_runtime._exceptions import (
    EpistemicYieldError,
    RequestError,
    SchemaCompileError,
)
from coreason_runtime.budget import DEFAULT_WORKFLOW, BudgetCage
from coreason_runtime.tensor._admission import checked_request, hold_while_paused, policy_of
from coreason_runtime.tensor._attempts import Conversation, RequestPlan, TierRunner
from coreason_runtime.tensor._plan import DryRun, plan_request
from coreason_runtime.tensor._replay import ReplayRecord
from coreason_runtime.tensor._schema import CompiledSchema, SchemaSpec
from coreason_runtime.tensor._stream import PartialStream
from coreason_runtime.tensor._types import (
    Attempt,
    Result,
    Tier,
)

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator
    from coreason_runtime.verify._tools import FieldTier

__all__ = ["TensorRouter"]


SYSTEM_PROMPT = (
    "You are a careful assistant for mathematics, algorithms and physics. Answer with a single "
    "JSON value that satisfies the JSON schema you are given, and nothing else."
)

Compiler = Callable[[SchemaSpec, "Tier | None"], CompiledSchema]


class TensorRouter:
    """Routes a structured request through a cascade of tiers under the workflow's budget.

    Parameters
    ----------
    tiers:
        The cascade in order, usually ``[local, oracle]``. A :class:`SteerableTier` receives
        the compiled grammar; any other tier the OpenAI strict form.
    budgets:
        The :class:`BudgetCage` every attempt is charged to.
    bus:
        Where ``request.*``, ``attempt.*`` events go.
    compiler:
        ``compiler(spec, tier) -> CompiledSchema``; by default each tier's own ``compile``.
    controls:
        The workflow controls every request runs under (the runtime's ``rt.controls``); a
        private set when omitted.
    max_attempts_per_tier:
        k_max: tries per tier, counting the first, for retryable failures.
    tool_tiers:
        Tiers that answer one field of a verified request outright (the span tiers before
        any remote tier); by default the CAS (:class:`~coreason_runtime.verify._tools.
        CasTier`).
    pause_timeout:
        How long a request that finds its workflow paused waits for a resume (``math.inf``:
        without limit) before raising :class:`WorkflowPausedError`.
    """

    def __init__(
        self,
        tiers: Sequence[Tier],
        budgets: BudgetCage,
        bus: EventBus | None = None,
        *,
        compiler: Compiler | None = None,
        max_attempts_per_tier: int = 3,
        default_max_tokens: int = 256,
        system_prompt: str = SYSTEM_PROMPT,
        executor: Callable[[Callable[[], Result[Any]]], concurrent.futures.Future[Any]]
        | None = None,
        controls: Controls | None = None,
        tool_tiers: Sequence[FieldTier] | None = None,
        pause_timeout: float = 600.0,
    ) -> None:
        if max_attempts_per_tier < 1:
            msg = f"max_attempts_per_tier must be >= 1, got {max_attempts_per_tier}"
            raise RequestError(msg)
        self._tiers: list[Tier] = list(tiers)
        self.budgets = budgets
        self.bus = bus if bus is not None else budgets.bus
        self._compiler = compiler
        self.max_attempts_per_tier = max_attempts_per_tier
        self.default_max_tokens = default_max_tokens
        self.system_prompt = system_prompt
        self._executor = executor
        self.controls = controls if controls is not None else Controls(self.bus)
        self.pause_timeout = pause_timeout
        self._lock = threading.Lock()
        self.cache: Any = None  # a SubgoalCache consulted before any tier, when attached
        self._tool_tiers = tool_tiers
        self.replay: ReplayRecord | None = None  # a notebook's exact replay, consulted first

    @classmethod
    def for_runtime(cls, rt: Coordinator) -> TensorRouter:
        """The router of a Coordinator: its local model, then its oracle if configured."""
        from coreason_runtime.tensor._wiring import default_tiers

        router = cls(
            default_tiers(rt),
            rt.budgets,
            rt.bus,
            max_attempts_per_tier=rt.config.max_attempts_per_tier,
            default_max_tokens=rt.config.max_tokens,
            executor=lambda fn: rt.call(fn),
            controls=rt.controls,
            pause_timeout=rt.config.pause_timeout,
        )
        if rt.config.subgoal_cache:
            router.cache = rt.cache
        router.replay = rt.engine("replay", ReplayRecord.for_runtime)
        return router

    # --- tiers -------------------------------------------------------------------------------

    @property
    def tiers(self) -> list[Tier]:
        return list(self._tiers)

    @property
    def tier_names(self) -> list[str]:
        return [t.name for t in self._tiers]

    def set_tiers(self, tiers: Sequence[Tier]) -> None:
        """Replace the cascade (e.g. with ``ScriptedTier`` doubles in tests)."""
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            msg = f"tier names must be unique, got {names}"
            raise RequestError(msg)
        with self._lock:
            self._tiers = list(tiers)

    @property
    def tool_tiers(self) -> list[FieldTier]:
        """The tool tiers a verified request's failing fields are sent to (CAS by default)."""
        if self._tool_tiers is None:
            from coreason_runtime.verify._tools import CasTier

            self._tool_tiers = [CasTier()]
        return list(self._tool_tiers)

    def set_tool_tiers(self, tiers: Sequence[FieldTier]) -> None:
        """Replace the tool tiers (``[]``: none)."""
        self._tool_tiers = list(tiers)

    def tier(self, name: str) -> Tier:
        for t in self._tiers:
            if t.name == name:
                return t
        msg = f"no tier named {name!r}; configured: {self.tier_names}"
        raise RequestError(msg)

    # --- compiling ---------------------------------------------------------------------------

    def compile(self, schema: Any, tier: Tier) -> CompiledSchema:
        """Compile ``schema`` (pydantic model or JSON schema dict) for ``tier``."""
        spec = schema if isinstance(schema, SchemaSpec) else SchemaSpec.from_user(schema)
        if self._compiler is not None:
            return self._compiler(spec, tier)
        return tier.compile(spec)

    # --- the request -------------------------------------------------------------------------

    def generate(
        self,
        schema: Any,
        prompt: str,
        *,
        workflow_id: str | None = None,
        tiers: Sequence[str] | None = None,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        system: str | None = None,
        timeout: float | None = None,
        cache: bool | None = None,
        verify: Any = None,
        pretty: bool = False,
        pause_timeout: float | None = None,
    ) -> Result[Any]:
        """Answer ``prompt`` with a value that validates against ``schema``.

        Parameters
        ----------
        schema:
            A pydantic model class (``value`` is an instance) or a JSON schema dict
            (``value`` is the parsed JSON).
        prompt:
            The question.
        workflow_id:
            The ledger to charge; ``None`` charges the ``"default"`` workflow (no ceiling).
        tiers:
            Restrict the cascade to these tier names, in the cascade's order.
        max_tokens:
            Output tokens per attempt (default from the config).
        cache:
            Consult the subgoal cache (a hit: tier ``"cache"``, no cost): by default for greedy
            requests only, ``True`` for sampled ones too, ``False`` never. Only values whose
            verifiers passed (or greedy ones of requests naming none) are admitted.
        verify:
            Verifiers (:mod:`coreason_runtime.verifiers`, callables ``value -> failures``, a
            list, or a ``VerifyPolicy``). A rejected field is re-decoded in place, then asked
            of the span tiers (CAS, a remote tier), then the request is retried, escalated.
        pretty:
            Let the local tier indent its JSON (bounded whitespace); compact by default, so a
            model can neither pad forever with whitespace nor spend tokens on it.
        pause_timeout:
            Seconds a request that finds its workflow paused waits (saying so, reserving
            nothing) before :class:`WorkflowPausedError`; ``None``: the router's default
            (``COREASON_PAUSE_TIMEOUT``, 600 s), ``math.inf``: no limit.

        Returns a :class:`Result`: ``value``, ``tier``, ``attempts``, ``cost``, ``verified``...

        Raises
        ------
        SchemaError
            The schema is not a schema (before any spend).
        RequestError
            Empty prompt, unknown tier name, bad ``max_tokens``.
        UnknownWorkflowError
            No ledger for ``workflow_id``.
        BudgetExceededError
            The ceiling was reached; no further attempt is made. Carries ``attempts``.
        EpistemicYieldError
            Every tier failed; carries the attempts, schema, prompt, last verifier failures.
        VerifierError
            A verifier raised, returned garbage, named a missing field or timed out.
        WorkflowPausedError
            The workflow stayed paused for ``pause_timeout``; nothing was reserved.
        """
        spec = SchemaSpec.from_user(schema, pretty=pretty)
        policy = policy_of(verify)
        max_tokens = checked_request(prompt, max_tokens, self.default_max_tokens)
        wf = workflow_id or DEFAULT_WORKFLOW
        self.budgets.get(wf)  # UnknownWorkflowError before any spend
        cascade = self.select(tiers)
        wait = self.pause_timeout if pause_timeout is None else pause_timeout
        with self.controls.scope(wf) as ticket:
            hold_while_paused(ticket, wait)  # before anything is reserved
            plan = RequestPlan(
                wf, prompt, ticket, max_tokens, temperature, seed, timeout, verify=policy
            )
            return self._run(spec, plan, cascade, system, cache)

    def _run(
        self,
        spec: SchemaSpec,
        plan: RequestPlan,
        cascade: list[Tier],
        system: str | None,
        cache: bool | None,
    ) -> Result[Any]:
        """The cascade, or the notebook's replay record when it has the request."""
        run = functools.partial(self._cascade, spec, plan, cascade, system, cache=cache)
        if self.replay is None:
            return run()
        sys_prompt, k = system or self.system_prompt, self.max_attempts_per_tier
        key = self.replay.key(spec, plan, cascade, sys_prompt, k)
        return self.replay.answer(key, spec, plan, [t.name for t in cascade], run)

    def stream(self, schema: Any, prompt: str, **kwargs: Any) -> PartialStream:
        """:meth:`generate`, streamed: iterate :class:`Partial` values as tokens arrive.

        Takes the arguments of :meth:`generate`. Each item's ``value`` is the JSON parsed so
        far; the last item is ``final``, with the validated value and the ``Result``. Leaving
        the loop early aborts the workflow's running work (it settles what ran).
        """
        return PartialStream(self, schema, prompt, kwargs)

    def dry_run(
        self,
        schema: Any,
        prompt: str,
        *,
        workflow_id: str | None = None,
        tiers: Sequence[str] | None = None,
        max_tokens: int | None = None,
        system: str | None = None,
        verify: Any = None,
    ) -> DryRun:
        """What :meth:`generate` would reserve, tier by tier, and what is left of Ω: compiles
        and counts tokens only (see :func:`~coreason_runtime.tensor._plan.plan_request`)."""
        options = {"tiers": tiers, "max_tokens": max_tokens, "system": system, "verify": verify}
        return plan_request(self, schema, prompt, workflow_id or DEFAULT_WORKFLOW, **options)

    def _cascade(
        self,
        spec: SchemaSpec,
        plan: RequestPlan,
        cascade: list[Tier],
        system: str | None,
        *,
        cache: bool | None,
    ) -> Result[Any]:
        wf = plan.workflow_id
        started = time.monotonic()
        self.bus.emit(
            EventType.REQUEST_STARTED,
            workflow_id=wf,
            source="router",
            schema_name=spec.name,
            schema_key=spec.key,
            tiers=[t.name for t in cascade],
        )
        lookup = cache is True or (cache is None and plan.temperature == 0)
        cached = self._from_cache(spec, plan) if lookup else None
        if cached is not None:
            return cached
        conv = Conversation(
            [
                {"role": "system", "content": system or self.system_prompt},
                {"role": "user", "content": plan.prompt},
            ]
        )
        spans: list[FieldTier] = []
        if plan.verify is not None:
            from coreason_runtime.tensor._verified import field_tiers

            spans = field_tiers(plan.verify, self.tool_tiers, cascade, self.compile, plan)
        runner = TierRunner(self.budgets, self.bus, self.compile, self.max_attempts_per_tier, spans)
        for i, tier in enumerate(cascade):
            if i:
                self.bus.emit(
                    EventType.ESCALATED,
                    workflow_id=wf,
                    source="router",
                    from_tier=cascade[i - 1].name,
                    to_tier=tier.name,
                    reason=conv.attempts[-1].error_type if conv.attempts else None,
                )
            result = runner.run(tier, spec, conv, plan)
            if result is not None:
                self.bus.emit(
                    EventType.REQUEST_FINISHED,
                    workflow_id=wf,
                    source="router",
                    tier=result.tier,
                    cost=result.cost,
                    attempts=len(result.attempts),
                    duration_s=time.monotonic() - started,
                )
                if cache is not False:
                    self._admit_to_cache(spec, plan, result)
                return result
        raise self._yield(spec, plan, conv)

    def _yield(
        self, spec: SchemaSpec, plan: RequestPlan, conv: Conversation
    ) -> EpistemicYieldError:
        wf = plan.workflow_id
        cost = conv.cost
        tried = ", ".join(f"{a.tier}#{a.index}: {a.error_type}" for a in conv.attempts) or "none"
        rejected = "; ".join(f.describe() for f in conv.failures)
        msg = (
            f"every tier failed for workflow {wf!r} ({tried}); a human must answer. "
            f"C charged: {cost:g}" + (f". Still rejected: {rejected}" if rejected else "")
        )
        self.bus.emit(
            EventType.YIELDED,
            workflow_id=wf,
            source="router",
            cost=cost,
            attempts=[a.model_dump() for a in conv.attempts],
            schema_name=spec.name,
        )
        return EpistemicYieldError(
            msg,
            workflow_id=wf,
            attempts=conv.attempts,
            schema=spec.json_schema,
            prompt=plan.prompt,
            spec=spec,
            ledger=self.budgets.get(wf),
            failures=conv.failures,
        )

    def submit(self, schema: Any, prompt: str, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """:meth:`generate` on the runtime's executor; returns a future."""
        if self._executor is None:
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
            fut = pool.submit(self.generate, schema, prompt, **kwargs)
            pool.shutdown(wait=False)
            return fut
        return self._executor(lambda: self.generate(schema, prompt, **kwargs))

    def select(self, names: Sequence[str] | None) -> list[Tier]:
        """The cascade restricted to ``names``, in its order (all tiers for ``None``)."""
        if names is None:
            return list(self._tiers)
        if isinstance(names, str):
            names = [names]
        wanted = [n for n in names if n != "human"]
        unknown = [n for n in wanted if n not in self.tier_names]
        if unknown:
            hint = ""
            if "oracle" in unknown:
                hint = " (configure one with COREASON_ORACLE_BASE_URL / _MODEL / _API_KEY)"
            msg = f"unknown tier(s) {unknown}; configured: {self.tier_names}{hint}"
            raise RequestError(msg)
        return [t for t in self._tiers if t.name in wanted]

    # --- the subgoal cache -------------------------------------------------------------------

    def _from_cache(self, spec: SchemaSpec, plan: RequestPlan) -> Result[Any] | None:
        from coreason_runtime.tensor._cached import from_cache

        return from_cache(self.cache, self.bus, spec, plan)

    def _admit_to_cache(self, spec: SchemaSpec, plan: RequestPlan, result: Result[Any]) -> None:
        from coreason_runtime.tensor._cached import admit_to_cache

        admit_to_cache(self.cache, spec, plan, result)

    # --- lazy fields -------------------------------------------------------------------------

    def force(self, result: Result[Any], pointer: str, **options: Any) -> Result[Any]:
        """Force the thunk a lazy field of ``result`` still holds: a sub-request for that
        field alone (``options`` as for :meth:`generate`); the new Result pays for both.

        Raises
        ------
        RequestError
            ``pointer`` holds no thunk in ``result``.
        """
        from coreason_runtime.tensor._verified import force_thunk

        return force_thunk(self, result, pointer, **options)

    # --- the Oracle Circuit: a human answers -------------------------------------------------

    def resolve_yield(self, error: EpistemicYieldError, answer: Any) -> Result[Any]:
        """Validate a human's ``answer`` to a yielded request and record it as tier "human".

        Raises
        ------
        ValidationFailure
            The answer does not satisfy the schema; nothing is recorded.
        """
        spec = error.spec
        if spec is None:
            if error.schema is None:
                msg = "this EpistemicYieldError carries no schema to validate against"
                raise SchemaCompileError(msg)
            spec = SchemaSpec.from_user(error.schema)
        if isinstance(answer, BaseModel):
            answer = answer.model_dump(mode="json")
        value = spec.validate_value(answer)
        wf = error.workflow_id or DEFAULT_WORKFLOW
        self.budgets.record(wf, "human", note="Oracle Circuit: answered by a human")
        attempt = Attempt(tier="human", index=1, ok=True, model="human")
        attempts = [*error.attempts, attempt]
        self.bus.emit(
            EventType.HUMAN_ANSWERED, workflow_id=wf, source="router", schema_name=spec.name
        )
        self.bus.emit(
            EventType.REQUEST_FINISHED,
            workflow_id=wf,
            source="router",
            tier="human",
            cost=sum(a.cost for a in attempts),
            attempts=len(attempts),
        )
        text = value.model_dump_json() if isinstance(value, BaseModel) else str(answer)
        return Result(
            value=value,
            tier="human",
            attempts=attempts,
            cost=sum(a.cost for a in attempts),
            workflow_id=wf,
            text=text,
            model="human",
            schema_key=spec.key,
        )

    def close(self) -> None:
        """Close every tier (connections, models)."""
        for tier in self._tiers:
            tier.close()

    def __repr__(self) -> str:
        return f"<TensorRouter tiers={self.tier_names} k_max={self.max_attempts_per_tier}>"

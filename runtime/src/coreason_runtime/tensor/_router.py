"""The TensorRouter: local tier first, then the oracle, then the human (the Oracle Circuit)."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from coreason_runtime._events import EventBus, EventType
from coreason_runtime._exceptions import (
    BudgetExceededError,
    CoreasonError,
    EpistemicYieldError,
    RequestError,
    SchemaCompileError,
    TierError,
)
from coreason_runtime.budget import DEFAULT_WORKFLOW, BudgetCage
from coreason_runtime.tensor._correction import reask, retry_policy
from coreason_runtime.tensor._schema import CompiledSchema, SchemaSpec
from coreason_runtime.tensor._types import Attempt, Result, Tier, TierOutput, TierRequest

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator

__all__ = ["TensorRouter"]

logger = logging.getLogger("coreason_runtime.router")

SYSTEM_PROMPT = (
    "You are a careful assistant for mathematics, algorithms and physics. Answer with a single "
    "JSON value that satisfies the JSON schema you are given, and nothing else."
)

Compiler = Callable[[SchemaSpec, "Tier | None"], CompiledSchema]


def _is_steerable(tier: Tier) -> bool:
    return bool(getattr(tier, "steerable", False))


class _Conversation:
    """The mutable state of one request across attempts: the messages and every attempt."""

    def __init__(self, messages: list[dict[str, str]]) -> None:
        self.messages = messages
        self.attempts: list[Attempt] = []


class TensorRouter:
    """Routes a structured request through a cascade of tiers under the workflow's budget.

    Parameters
    ----------
    tiers:
        The cascade in order, usually ``[local, oracle]``. Tiers with ``steerable = True``
        receive the compiled grammar; the others receive the OpenAI strict form.
    budgets:
        The :class:`BudgetCage` every attempt is charged to.
    bus:
        Where ``request.*``, ``attempt.*`` events go.
    compiler:
        ``compiler(spec, tier) -> CompiledSchema``; by default each tier's own
        ``compile(spec)`` when it has one, else a schema with only validation.
    max_attempts_per_tier:
        k_max: tries per tier, counting the first, for retryable failures.
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
        self._lock = threading.Lock()
        self.cache: Any = None  # a SubgoalCache consulted before any tier, when attached
        self._fallback_compiler: Any = None

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
        )
        if rt.config.subgoal_cache:
            router.cache = rt.cache
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

    def tier(self, name: str) -> Tier:
        for t in self._tiers:
            if t.name == name:
                return t
        msg = f"no tier named {name!r}; configured: {self.tier_names}"
        raise RequestError(msg)

    # --- compiling ---------------------------------------------------------------------------

    def compile(self, schema: Any, tier: Tier | None = None) -> CompiledSchema:
        """Compile ``schema`` (pydantic model or JSON schema dict) for ``tier``."""
        spec = schema if isinstance(schema, SchemaSpec) else SchemaSpec.from_user(schema)
        if self._compiler is not None:
            return self._compiler(spec, tier)
        own = getattr(tier, "compile", None)
        if callable(own):
            result = own(spec)
            assert isinstance(result, CompiledSchema)
            return result
        compiler = getattr(tier, "compiler", None) or self._default_compiler()
        compiled: CompiledSchema = compiler.compile(spec)
        return compiled

    def _default_compiler(self) -> Any:
        """A tokenizer-free UniversalCompiler (OpenAI strict form, regex, portable grammar)."""
        if self._fallback_compiler is None:
            from coreason_runtime.tensor._compiler import UniversalCompiler

            self._fallback_compiler = UniversalCompiler(None, bus=self.bus)
        return self._fallback_compiler

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
        cache: bool = True,
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
            Consult (and feed) the subgoal cache, when one is attached; a verified hit is
            answered by tier ``"cache"`` at no cost.

        Returns
        -------
        Result
            ``value``, ``tier``, ``attempts``, ``cost``.

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
            Every tier failed; carries every attempt, the schema and the prompt.
        """
        spec = SchemaSpec.from_user(schema)
        if not isinstance(prompt, str) or not prompt.strip():
            msg = "prompt must be a non-empty string"
            raise RequestError(msg)
        max_tokens = self.default_max_tokens if max_tokens is None else max_tokens
        if not isinstance(max_tokens, int) or max_tokens < 1:
            msg = f"max_tokens must be a positive integer, got {max_tokens!r}"
            raise RequestError(msg)
        wf = workflow_id or DEFAULT_WORKFLOW
        self.budgets.get(wf)  # UnknownWorkflowError before any spend
        cascade = self._select(tiers)

        started = time.monotonic()
        self.bus.emit(
            EventType.REQUEST_STARTED,
            workflow_id=wf,
            source="router",
            schema=spec.name,
            schema_key=spec.key,
            tiers=[t.name for t in cascade],
        )
        cached = self._from_cache(spec, prompt, wf) if cache else None
        if cached is not None:
            return cached
        conv = _Conversation(
            [
                {"role": "system", "content": system or self.system_prompt},
                {"role": "user", "content": prompt},
            ]
        )
        previous: Tier | None = None
        for tier in cascade:
            if previous is not None:
                self.bus.emit(
                    EventType.ESCALATED,
                    workflow_id=wf,
                    source="router",
                    from_tier=previous.name,
                    to_tier=tier.name,
                    reason=conv.attempts[-1].error_type if conv.attempts else None,
                )
            previous = tier
            result = self._run_tier(
                tier, spec, prompt, conv, wf, max_tokens, temperature, seed, timeout
            )
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
                if cache:
                    self._admit_to_cache(spec, prompt, result)
                return result

        cost = sum(a.cost for a in conv.attempts)
        tried = ", ".join(f"{a.tier}#{a.index}: {a.error_type}" for a in conv.attempts) or "none"
        msg = (
            f"every tier failed for workflow {wf!r} ({tried}); a human must answer. "
            f"C charged: {cost:g}"
        )
        self.bus.emit(
            EventType.YIELDED,
            workflow_id=wf,
            source="router",
            cost=cost,
            attempts=[a.model_dump() for a in conv.attempts],
            schema=spec.name,
        )
        err = EpistemicYieldError(
            msg,
            workflow_id=wf,
            attempts=conv.attempts,
            schema=spec.json_schema,
            prompt=prompt,
            ledger=self.budgets.get(wf),
        )
        err.spec = spec  # type: ignore[attr-defined]
        raise err

    def submit(self, schema: Any, prompt: str, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """:meth:`generate` on the runtime's executor; returns a future."""
        if self._executor is None:
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
            fut = pool.submit(self.generate, schema, prompt, **kwargs)
            pool.shutdown(wait=False)
            return fut
        return self._executor(lambda: self.generate(schema, prompt, **kwargs))

    def _select(self, names: Sequence[str] | None) -> list[Tier]:
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

    # --- one tier: the correction loop -------------------------------------------------------

    def _run_tier(
        self,
        tier: Tier,
        spec: SchemaSpec,
        prompt: str,
        conv: _Conversation,
        wf: str,
        max_tokens: int,
        temperature: float,
        seed: int | None,
        timeout: float | None,
    ) -> Result[Any] | None:
        try:
            compiled = self.compile(spec, tier)
        except CoreasonError as e:
            self._record_skip(conv, tier, wf, e)
            return None
        form = "grammar" if _is_steerable(tier) else "openai"
        missing = compiled.errors.get(form)
        if (
            missing is not None
            and (compiled.grammar if form == "grammar" else compiled.openai) is None
        ):
            self._record_skip(conv, tier, wf, missing)
            return None

        conv.messages = [conv.messages[0], {"role": "user", "content": prompt}]
        index = 0
        try:
            for attempt in retry_policy(self.max_attempts_per_tier):
                with attempt:
                    index += 1
                    return self._attempt(
                        tier, compiled, conv, wf, index, max_tokens, temperature, seed, timeout
                    )
        except BudgetExceededError as e:
            e.attempts = list(conv.attempts)
            self.bus.emit(
                EventType.REQUEST_FAILED,
                workflow_id=wf,
                source="router",
                tier=tier.name,
                error_type="BudgetExceededError",
            )
            raise
        except CoreasonError:
            return None  # recorded in conv.attempts; escalate
        return None

    def _attempt(
        self,
        tier: Tier,
        compiled: CompiledSchema,
        conv: _Conversation,
        wf: str,
        index: int,
        max_tokens: int,
        temperature: float,
        seed: int | None,
        timeout: float | None,
    ) -> Result[Any]:
        # A greedy retry of a small model tends to repeat its wrong answer even with the
        # error fed back: later attempts sample (T rises by 0.4 a retry, seeds differ).
        retry_temperature = max(temperature, 0.4 * (index - 1))
        retry_seed = seed if index == 1 else (seed or 0) + index - 1
        request = TierRequest(
            messages=list(conv.messages),
            schema=compiled,
            max_tokens=max_tokens,
            workflow_id=wf,
            temperature=retry_temperature,
            seed=retry_seed,
            timeout=timeout,
            attempt=index,
        )
        self.bus.emit(
            EventType.ATTEMPT_STARTED,
            workflow_id=wf,
            source="router",
            tier=tier.name,
            attempt=index,
        )
        t0 = time.monotonic()
        meter = self.budgets.open(
            wf, self._estimate_prompt(tier, conv.messages, compiled), max_tokens, tier.name
        )
        output: TierOutput | None = None
        try:
            output = tier.complete(request, meter)
            value = compiled.validate_text(self._from_strict(tier, compiled, output.text))
        except CoreasonError as e:
            if e.tier is None:
                e.tier = tier.name
            if e.workflow_id is None:
                e.workflow_id = wf
            text = output.text if output is not None else getattr(e, "output", None)
            meter.settle()
            self._record_failure(
                conv,
                tier,
                wf,
                index,
                meter.tokens_in,
                meter.tokens_out,
                meter.consumed,
                e,
                text,
                time.monotonic() - t0,
            )
            conv.messages = reask(conv.messages, e)
            raise
        except Exception as e:  # a tier bug must not leak the reservation or crash the cascade
            meter.settle()
            wrapped = TierError(
                f"tier {tier.name!r} crashed: {type(e).__name__}: {e}",
                tier=tier.name,
                workflow_id=wf,
            )
            self._record_failure(
                conv,
                tier,
                wf,
                index,
                meter.tokens_in,
                meter.tokens_out,
                meter.consumed,
                wrapped,
                None,
                time.monotonic() - t0,
            )
            raise wrapped from e
        meter.settle()
        attempt = Attempt(
            tier=tier.name,
            index=index,
            tokens_in=meter.tokens_in,
            tokens_out=meter.tokens_out,
            cost=meter.consumed,
            ok=True,
            output=output.text,
            model=output.model,
            duration_s=time.monotonic() - t0,
        )
        conv.attempts.append(attempt)
        self.bus.emit(
            EventType.ATTEMPT_FINISHED,
            workflow_id=wf,
            source="router",
            tier=tier.name,
            attempt=index,
            tokens_in=attempt.tokens_in,
            tokens_out=attempt.tokens_out,
            cost=attempt.cost,
        )
        return Result(
            value=value,
            tier=tier.name,
            attempts=list(conv.attempts),
            cost=sum(a.cost for a in conv.attempts),
            workflow_id=wf,
            text=output.text,
            model=output.model,
            seed=seed,
            schema_key=compiled.key,
            revision=output.extra.get("revision"),
        )

    @staticmethod
    def _from_strict(tier: Tier, compiled: CompiledSchema, text: str) -> str:
        """Undo OpenAI strict mode's forced nulls in optional fields before validation."""
        if _is_steerable(tier) or compiled.openai is None:
            return text
        from coreason_runtime.tensor._openai_strict import denullify

        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return text  # validation reports it, with the exact error
        return json.dumps(denullify(value, compiled.spec.json_schema))

    @staticmethod
    def _estimate_prompt(
        tier: Tier, messages: list[dict[str, str]], compiled: CompiledSchema | None = None
    ) -> int:
        """Prompt tokens to reserve for: exact where the tier can tokenise, else generous."""
        encode = getattr(tier, "encode_messages", None)
        framing = getattr(tier, "schema_messages", None)
        if callable(encode) and callable(framing) and compiled is not None:
            return len(encode(framing(messages, compiled)))
        counter = getattr(tier, "count_prompt", None)
        if callable(counter):
            base = int(counter(messages))
        else:
            # No tokenizer: a generous estimate (≈3 characters a token plus chat framing).
            base = sum(len(m["content"]) // 3 + 8 for m in messages)
        if compiled is None:
            return base
        # A server puts the response schema into the prompt it bills for; JSON is dense
        # (≈2 characters a token), and learning the true count only from the final usage
        # would let a tight ceiling be crossed by the whole schema.
        schema = compiled.openai if compiled.openai is not None else compiled.spec.json_schema
        return base + len(json.dumps(schema, separators=(",", ":"))) // 2 + 16

    def _record_failure(
        self,
        conv: _Conversation,
        tier: Tier,
        wf: str,
        index: int,
        tokens_in: int,
        tokens_out: int,
        cost: float,
        error: CoreasonError,
        output: str | None,
        duration: float,
    ) -> None:
        attempt = Attempt(
            tier=tier.name,
            index=index,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cost=cost,
            ok=False,
            error=error.message[:2000],
            error_type=type(error).__name__,
            output=output,
            model=getattr(tier, "model_name", None),
            duration_s=duration,
        )
        conv.attempts.append(attempt)
        self.bus.emit(
            EventType.ATTEMPT_FAILED,
            workflow_id=wf,
            source="router",
            tier=tier.name,
            attempt=index,
            error_type=attempt.error_type,
            error=attempt.error,
            cost=cost,
            retryable=error.retryable,
        )

    def _record_skip(self, conv: _Conversation, tier: Tier, wf: str, error: CoreasonError) -> None:
        attempt = Attempt(
            tier=tier.name,
            index=0,
            ok=False,
            skipped=True,
            error=error.message,
            error_type=type(error).__name__,
        )
        conv.attempts.append(attempt)
        self.bus.emit(
            EventType.ATTEMPT_FAILED,
            workflow_id=wf,
            source="router",
            tier=tier.name,
            attempt=0,
            error_type=attempt.error_type,
            error=attempt.error,
            skipped=True,
            cost=0.0,
            retryable=False,
        )

    # --- the subgoal cache -------------------------------------------------------------------

    def _from_cache(self, spec: SchemaSpec, prompt: str, wf: str) -> Result[Any] | None:
        if self.cache is None:
            return None
        try:
            hit = self.cache.lookup_request(spec.key, prompt, workflow_id=wf)
        except CoreasonError:
            logger.exception("subgoal cache lookup failed; asking the tiers")
            return None
        if hit is None or hit.value_json is None:
            return None
        try:
            value = spec.validate_text(hit.value_json)
        except CoreasonError:
            return None  # a stale entry never reaches the user
        attempt = Attempt(tier="cache", index=1, ok=True, output=hit.value_json)
        self.bus.emit(
            EventType.REQUEST_FINISHED,
            workflow_id=wf,
            source="router",
            tier="cache",
            cost=0.0,
            attempts=1,
            duration_s=0.0,
        )
        return Result(
            value=value,
            tier="cache",
            attempts=[attempt],
            cost=0.0,
            workflow_id=wf,
            text=hit.value_json,
            schema_key=spec.key,
        )

    def _admit_to_cache(self, spec: SchemaSpec, prompt: str, result: Result[Any]) -> None:
        if self.cache is None or result.tier == "cache":
            return
        value = result.value
        text = value.model_dump_json() if isinstance(value, BaseModel) else json.dumps(value)
        try:
            self.cache.admit_request(spec.key, prompt, text, result.workflow_id)
        except CoreasonError:  # a cache that refuses must never fail an answered request
            logger.exception("subgoal cache admission failed")

    # --- the Oracle Circuit: a human answers -------------------------------------------------

    def resolve_yield(self, error: EpistemicYieldError, answer: Any) -> Result[Any]:
        """Validate a human's ``answer`` to a yielded request and record it as tier "human".

        Raises
        ------
        ValidationFailure
            The answer does not satisfy the schema; nothing is recorded.
        """
        spec: SchemaSpec | None = getattr(error, "spec", None)
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
        self.bus.emit(EventType.HUMAN_ANSWERED, workflow_id=wf, source="router", schema=spec.name)
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
        for tier in self._tiers:
            closer = getattr(tier, "close", None)
            if callable(closer):
                closer()

    def __repr__(self) -> str:
        return f"<TensorRouter tiers={self.tier_names} k_max={self.max_attempts_per_tier}>"

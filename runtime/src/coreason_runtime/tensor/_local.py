"""Tier 0: the local model. Every attempt is a decode session on the runtime's decode engine.

The tier has no token loop of its own: it builds a :class:`~coreason_runtime.decode.
DecodeSession` (grammar mask, meter, deadline, a reused prefix from the prefix cache) and
submits it to the engine's thread, where it steps in one batch with every other session
decoding there (concurrent asks, background asks, served requests); the caller's thread waits.
The workflow's controls reach the session through the request's ticket: a pause parks it at
the next decoder-layer boundary (the others go on), a resume continues it, an abort cancels it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from coreason_runtime._controls import Ticket
from coreason_runtime._events import EventBus, EventType
from coreason_runtime._exceptions import (
    ContextLengthError,
    CoreasonError,
    RequestError,
    SchemaCompileError,
    SessionStateError,
    WorkflowAbortedError,
)
from coreason_runtime._signals import interrupts_deferred
from coreason_runtime.decode import (
    BlockStore,
    DecodeEngine,
    DecodeSession,
    GrammarMask,
    Sampler,
    SessionState,
)
from coreason_runtime.tensor._compiler import LocalGrammar, UniversalCompiler
from coreason_runtime.tensor._prefix import PrefixCache
from coreason_runtime.tensor._schema import CompiledSchema, SchemaSpec
from coreason_runtime.tensor._types import (
    Messages,
    Meter,
    SteerableTier,
    TierOutput,
    TierRequest,
    UnmeteredMeter,
)

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator
    from coreason_runtime.models._loader import LoadedModel

__all__ = ["LocalTier"]

_ABANDON_WAIT_S = 10.0  # how long an abandoned session gets to leave the engine's step

DEFAULT_TIMEOUT = 120.0
SYSTEM_HINT = (
    "Answer with one JSON value and nothing else. It must match this JSON schema:\n{schema}"
)


class _TextStream:
    """Publishes a session's text as it grows: ``tokens.batch`` events and ``on_delta``; counts
    its tokens on the request's ticket."""

    def __init__(
        self,
        tier: LocalTier,
        ticket: Ticket,
        workflow_id: str | None,
        on_delta: Callable[[str], None] | None,
    ) -> None:
        self._tier = tier
        self._ticket = ticket
        self._workflow_id = workflow_id
        self._on_delta = on_delta
        self._text = ""
        self._count = 0

    def on_token(self, session: DecodeSession) -> None:
        self._ticket.count_tokens(1)  # the workflow's running count (views, handles)
        if session.n_generated % self._tier.stream_every == 0:
            self.flush(session)

    def flush(self, session: DecodeSession, *, final: bool = False) -> None:
        text = self._tier.decode_text(session.output_ids)
        if not final:
            text = text.rstrip("\ufffd")  # hold back a half-decoded character
        delta = text[len(self._text) :]
        if not delta:
            return
        new_tokens = session.n_generated - self._count
        self._text, self._count = text, session.n_generated
        if self._on_delta is not None:
            self._on_delta(delta)
        self._tier.bus.emit(
            EventType.TOKENS,
            workflow_id=self._workflow_id,
            source=self._tier.name,
            tier=self._tier.name,
            delta=delta,
            tokens_out=new_tokens,
            total_out=session.n_generated,
        )


class LocalTier(SteerableTier):
    """The local model as a steerable tier: its output always parses under the grammar.

    Sessions run on ``engine`` (the runtime's decode engine, sharing the model's lock), so
    concurrent requests decode in one batch, their tokens sharing forward passes, and every
    mechanism of the engine (pause at a layer boundary, checkpoints, span repair) applies to a
    request in flight. Prompts share KV through the prefix cache, a view of the block store
    ``kv`` (or, without one, of a private RAM-only store bounded by ``prefix_cache_tokens``); a
    paused or preempted request hands its KV to that store while it waits.

    Parameters
    ----------
    loaded
        A :class:`~coreason_runtime.models.LoadedModel` (real or tiny).
    compiler
        The compiler whose grammars this tier decodes with; built for ``loaded`` when omitted.
    bus
        Where ``tokens.batch``, ``cache.prefix_reused`` and ``decode.*`` events go.
    engine
        The decode engine to run sessions on; one over ``loaded`` when omitted.
    kv
        The KV block store (``rt.kv``: RAM and disk tiers shared by the runtime).
    close_values
        Close a value before the tokens run out, and close a looping string or array
        (:class:`~coreason_runtime.decode._closing.Closing`); ``False`` decodes under the
        bare grammar (benchmarks compare the two).
    """

    name = "local"
    bus: EventBus

    def __init__(
        self,
        loaded: LoadedModel,
        compiler: UniversalCompiler | None = None,
        bus: EventBus | None = None,
        *,
        engine: DecodeEngine | None = None,
        prefix_cache_tokens: int = 4096,
        stream_every: int = 8,
        timeout: float = DEFAULT_TIMEOUT,
        kv: BlockStore | None = None,
        close_values: bool = True,
    ) -> None:
        self.loaded = loaded
        self.close_values = close_values
        self.bus = bus if bus is not None else (engine.bus if engine is not None else EventBus())
        self._own_engine = engine is None
        self.engine = engine or DecodeEngine(
            loaded.model, loaded.tokenizer, bus=self.bus, lock=loaded.lock
        )
        self.compiler = compiler or UniversalCompiler(loaded, bus=self.bus)
        self.info = self.engine.info
        self.prefix_cache = PrefixCache(prefix_cache_tokens, store=kv)
        self.kv = self.prefix_cache.blocks
        self.stream_every = max(1, stream_every)
        self.timeout = timeout

    @classmethod
    def for_runtime(cls, rt: Coordinator) -> LocalTier:
        """The local tier of a Coordinator: its decode engine, model, bus and timeouts."""
        from coreason_runtime.models import load_model

        engine = rt.decode
        loaded = load_model(rt.config.model)
        compiler = UniversalCompiler(loaded, timeout=rt.config.compile_timeout, bus=rt.bus)
        return cls(
            loaded,
            compiler,
            bus=rt.bus,
            engine=engine,
            timeout=rt.config.local_timeout,
            kv=rt.kv,
        )

    @classmethod
    def for_model(cls, rt: Coordinator, model: str) -> LocalTier:
        """Another in-kernel model than the runtime's: its own decode engine, ``rt.bus``."""
        from coreason_runtime.models import load_model

        loaded = load_model(model)
        compiler = UniversalCompiler(loaded, timeout=rt.config.compile_timeout, bus=rt.bus)
        return cls(loaded, compiler, bus=rt.bus, timeout=rt.config.local_timeout)

    @property
    def model_name(self) -> str:
        return self.loaded.name

    def close(self) -> None:
        """Stop the decode engine's thread if this tier made the engine."""
        if self._own_engine:
            self.engine.close()

    @property
    def context_length(self) -> int | None:
        """The most tokens, prompt and output together, the model attends to (its config's
        ``max_position_embeddings``; None for an architecture that names no such bound)."""
        n = getattr(self.loaded.model.config, "max_position_embeddings", None)
        return int(n) if isinstance(n, int) and n > 0 else None

    @property
    def revision(self) -> str | None:
        return self.loaded.revision

    # --- prompts -----------------------------------------------------------------------------

    def compile(self, spec: SchemaSpec) -> CompiledSchema:
        """Every form of ``spec``, the grammar compiled against this model's tokenizer."""
        return self.compiler.compile(spec)

    def count_prompt(self, messages: Messages, compiled: CompiledSchema | None = None) -> int:
        """Exact: the tokens of the chat this tier will really decode from."""
        if compiled is not None:
            messages = self.schema_messages(messages, compiled)
        return len(self.encode_messages(messages))

    def encode_messages(self, messages: Messages) -> list[int]:
        """Token ids of a chat, with the generation prompt, through the model's chat template."""
        tok = self.loaded.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        ids: list[int] = tok(text, add_special_tokens=False)["input_ids"]
        return ids

    def decode_text(self, ids: Any) -> str:
        """The text of generated token ids (special tokens dropped)."""
        return str(self.loaded.tokenizer.decode(list(ids), skip_special_tokens=True))

    @staticmethod
    def schema_messages(messages: Messages, schema: CompiledSchema) -> Messages:
        """``messages`` with a system hint that the answer must be JSON for ``schema``."""
        hint = SYSTEM_HINT.format(
            schema=json.dumps(schema.spec.json_schema, separators=(",", ":"), sort_keys=True)
        )
        if messages and messages[0].get("role") == "system":
            first = {**messages[0], "content": f"{messages[0]['content']}\n\n{hint}"}
            return [first, *messages[1:]]
        return [{"role": "system", "content": hint}, *messages]

    # --- the tier ----------------------------------------------------------------------------

    def complete(self, request: TierRequest, meter: Meter) -> TierOutput:
        """Decode one answer under ``request.schema``'s grammar, charging ``meter`` as it goes.

        Greedy when ``request.temperature`` is 0, else sampled from a generator seeded with
        ``request.seed`` (0 when unset, so every answer can be reproduced). The prompt is
        charged once before decoding, each output token as it is produced; the decoder stops
        before a token the meter's grant no longer covers.

        Raises
        ------
        BudgetExceededError
            From ``meter``: the prompt or the next token would cross the ceiling.
        WorkflowAbortedError
            The workflow was aborted while this decoded (charged what was consumed).
        GrammarDeadEndError
            The grammar allowed no token (escalate; do not retry).
        TierTimeoutError
            Past ``request.timeout`` (or the tier's default), prefill included.
        SchemaCompileError, SchemaCompileTimeout
            The schema has no local grammar (the router skips the tier on these).
        VerifierError
            ``request.verify``'s verifiers misbehaved.

        With ``request.verify`` the answer is verified in its session before the session is
        let go, and each rejected field re-decoded in place (``VerifyJob.run``; the repair
        tokens are charged to ``meter``); ``TierOutput.verification`` says what happened.
        """
        grammar = self._grammar(request.schema, request.workflow_id)
        messages = self.schema_messages(request.messages, request.schema)
        finish = None
        job = request.verify
        if job is not None:
            from coreason_runtime.verify._span import CountingMeter, SessionDraft

            def finish(session: DecodeSession) -> Any:
                repair_meter = CountingMeter(meter, request.ticket)
                return job.run(SessionDraft(session), repair_meter, request.ticket.checkpoint)

        return self.decode(
            self.encode_messages(messages),
            max_tokens=request.max_tokens,
            grammar=grammar,
            sampler=Sampler(temperature=request.temperature, seed=request.seed or 0),
            meter=meter,
            timeout=request.timeout,
            ticket=request.ticket,
            workflow_id=request.workflow_id,
            finish=finish,
        )

    def complete_text(
        self,
        messages: Messages,
        max_tokens: int,
        grammar: CompiledSchema | None = None,
        on_delta: Callable[[str], None] | None = None,
        *,
        temperature: float = 0.0,
        seed: int | None = None,
        meter: Meter | None = None,
        timeout: float | None = None,
        ticket: Ticket | None = None,
        workflow_id: str | None = None,
        ignore_eos: bool = False,
    ) -> TierOutput:
        """Chat completion, unconstrained unless ``grammar`` is given (used by ``coreason serve``).

        ``on_delta`` receives text deltas as they are decoded (every ``stream_every`` tokens).
        ``ignore_eos`` keeps decoding to ``max_tokens`` (benchmarks compare equal lengths).
        """
        ticket = ticket if ticket is not None else Ticket.detached()
        wf = workflow_id or ticket.workflow_id
        local = self._grammar(grammar, wf) if grammar is not None else None
        return self.decode(
            self.encode_messages(messages),
            max_tokens=max_tokens,
            grammar=local,
            sampler=Sampler(temperature=temperature, seed=seed or 0),
            meter=meter or UnmeteredMeter(),
            timeout=timeout,
            ticket=ticket,
            workflow_id=wf,
            on_delta=on_delta,
            ignore_eos=ignore_eos,
        )

    def _grammar(self, schema: CompiledSchema, workflow_id: str | None) -> LocalGrammar:
        grammar = schema.grammar
        if isinstance(grammar, LocalGrammar):
            return grammar
        err = schema.errors.get("grammar")
        if isinstance(err, CoreasonError):  # a fresh instance: the recorded one is shared
            raise type(err)(err.message, workflow_id=workflow_id, tier=self.name) from err
        msg = f"schema {schema.spec.name!r} has no local grammar"
        raise SchemaCompileError(msg, workflow_id=workflow_id, tier=self.name)

    # --- decoding ----------------------------------------------------------------------------

    def decode(
        self,
        prompt: list[int],
        *,
        max_tokens: int,
        grammar: LocalGrammar | None,
        sampler: Sampler,
        meter: Meter,
        timeout: float | None,
        ticket: Ticket,
        workflow_id: str,
        on_delta: Callable[[str], None] | None = None,
        ignore_eos: bool = False,
        finish: Callable[[DecodeSession], Any] | None = None,
    ) -> TierOutput:
        """Decode ``prompt`` as one session under the ticket's controls; its output.

        ``finish(session)`` runs on the finished session before it is let go (verification
        and span repair); what it returns is the output's ``verification``.

        Raises whatever stopped it, with this tier and the workflow named on the error.
        """
        if max_tokens < 1:
            msg = f"max_tokens must be at least 1, got {max_tokens}"
            raise RequestError(msg, workflow_id=workflow_id, tier=self.name)
        self._fit_context(len(prompt), max_tokens, workflow_id)
        started = time.perf_counter()
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        cache, reused = self.prefix_cache.lookup(prompt, self.loaded.model.config)
        if reused:
            self.bus.emit(
                EventType.PREFIX_REUSED,
                workflow_id=workflow_id,
                source=self.name,
                reused=reused,
                prefill=len(prompt) - reused,
            )
        stream = _TextStream(self, ticket, workflow_id, on_delta)
        session = self.engine.session(
            prompt,
            chat=False,
            sampler=sampler,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens if ignore_eos else 0,
            grammar=GrammarMask(grammar.matcher(self.info), self.info) if grammar else None,
            workflow_id=workflow_id,
            meter=meter,
            deadline=deadline,
            prefix=(cache, reused),
            on_token=stream.on_token,
            kv=self.kv,
            closing=self.close_values,
        )
        verification = None
        try:
            self._drive(session, ticket)
            stream.flush(session, final=True)
            if finish is not None:
                verification = finish(session)
        except CoreasonError as e:
            e.tier = e.tier or self.name
            e.workflow_id = e.workflow_id or workflow_id
            raise
        finally:
            if session.prefilled:  # the KV is exact for the tokens it holds, whatever happened
                self.prefix_cache.store(list(session.tokens[: session.kv_length]), session.cache)
        output = self._output(session, time.perf_counter() - started)
        output.verification = verification
        return output

    def _fit_context(self, prompt_tokens: int, max_tokens: int, workflow_id: str) -> None:
        """Refuse, before any prefill, a request the model's context cannot hold."""
        context = self.context_length
        if context is None or prompt_tokens + max_tokens <= context:
            return
        msg = (
            f"the prompt ({prompt_tokens} tokens) and max_tokens ({max_tokens}) exceed the "
            f"model's context of {context} tokens"
        )
        raise ContextLengthError(
            msg,
            limit=context,
            size=prompt_tokens + max_tokens,
            workflow_id=workflow_id,
            tier=self.name,
        )

    @staticmethod
    def _drive(session: DecodeSession, ticket: Ticket) -> None:
        """Run ``session`` to the end on the engine's thread, batched with every other session
        decoding there (concurrent requests, background asks), honouring the ticket's controls.

        Waits on this thread; whatever stopped the session (a budget, a deadline) is raised
        here. Leaving early (an interrupt of this thread) cancels the session.
        """
        with ticket.track(session):
            session.engine.submit(session, paused_ok=True)
            try:
                while session.wait() is not SessionState.FINISHED:
                    with contextlib.suppress(SessionStateError):  # resumed meanwhile: keep it
                        session.demote()  # its KV waits in the block store, not in RAM
                    ticket.checkpoint()  # blocks until resumed; raises once aborted
                    session.prefetch()  # the KV comes back while the session resumes
                    if session.state is SessionState.PAUSED:
                        session.resume()
            except BaseException:
                session.cancel("abandoned")
                # the engine's thread may be inside a step of it: let it stop before the
                # caller settles the lease, so every token it consumed is charged
                with interrupts_deferred():
                    session.wait(timeout=_ABANDON_WAIT_S)
                raise
        if session.error is not None:
            raise session.error
        if session.finish_reason == "aborted":
            ticket.checkpoint()  # raises WorkflowAbortedError with the workflow named
            msg = f"session {session.id} was cancelled"
            raise WorkflowAbortedError(msg, workflow_id=ticket.workflow_id)

    def _output(self, session: DecodeSession, seconds: float) -> TierOutput:
        finish = "stop"
        if session.finish_reason == "length" and not (
            session.grammar is not None and session.grammar.accepting
        ):
            finish = "length"
        return TierOutput(
            text=self.decode_text(session.output_ids),
            tokens_in=session.prompt_len,
            tokens_out=session.n_generated,
            model=self.loaded.name,
            finish_reason=finish,
            closed=session.closing.closed if session.closing is not None else None,
            extra={
                "revision": self.loaded.revision,
                "reused_tokens": session.reused_tokens,
                "prefill_tokens": session.prompt_len - session.reused_tokens,
                "seconds": seconds,
                "mask_seconds": session.timings.mask,
                "forward_seconds": session.timings.forward,
                "prefill_seconds": session.timings.prefill,
            },
        )

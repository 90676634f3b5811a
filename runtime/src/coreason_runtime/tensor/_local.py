"""Tier 0: the local model, decoding over an explicit KV cache, the grammar masking every step."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coreason_runtime._events import EventType
from coreason_runtime._exceptions import (
    BudgetExceededError,
    CoreasonError,
    GrammarDeadEndError,
    RequestError,
    SchemaCompileError,
    TierTimeoutError,
)
from coreason_runtime.models._gate import LayerGate
from coreason_runtime.tensor._compiler import LocalGrammar, UniversalCompiler, tokenizer_info
from coreason_runtime.tensor._prefix import PrefixCache
from coreason_runtime.tensor._schema import CompiledSchema
from coreason_runtime.tensor._types import Meter, TierOutput, TierRequest, UnmeteredMeter

if TYPE_CHECKING:
    from coreason_runtime._events import EventBus
    from coreason_runtime.models._loader import LoadedModel

__all__ = ["LocalTier"]

DEFAULT_TIMEOUT = 120.0
SYSTEM_HINT = (
    "Answer with one JSON value and nothing else. It must match this JSON schema:\n{schema}"
)


@dataclass
class _Run:
    """What one decode produced."""

    tokens: list[int]
    finish: str
    prompt_tokens: int
    reused: int
    seconds: float
    mask_seconds: float
    forward_seconds: float = 0.0
    prefill_seconds: float = 0.0


class LocalTier:
    """The local model as a steerable tier: its output always parses under the grammar.

    One lock serialises every forward pass on the model (the runtime may call from several
    threads). Prompts share KV state through a prefix cache bounded by ``prefix_cache_tokens``.

    Parameters
    ----------
    loaded
        A :class:`~coreason_runtime.models.LoadedModel` (real or tiny).
    compiler
        The compiler whose grammars this tier decodes with; built for ``loaded`` when omitted.
    bus
        Where ``tokens.batch`` and ``cache.prefix_reused`` events go.
    """

    name = "local"
    steerable = True

    def __init__(
        self,
        loaded: LoadedModel,
        compiler: UniversalCompiler | None = None,
        bus: EventBus | None = None,
        *,
        prefix_cache_tokens: int = 4096,
        stream_every: int = 8,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.loaded = loaded
        self.compiler = compiler or UniversalCompiler(loaded, bus=bus)
        self.bus = bus
        self.info = tokenizer_info(loaded)
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        self.stream_every = max(1, stream_every)
        self.timeout = timeout
        self._lock: threading.RLock = loaded.lock

    @classmethod
    def for_runtime(cls, rt: Any) -> LocalTier:
        """Build the local tier for a Coordinator: its configured model, bus and timeouts."""
        from coreason_runtime.models import load_model

        loaded = load_model(rt.config.model)
        compiler = UniversalCompiler(loaded, timeout=rt.config.compile_timeout, bus=rt.bus)
        return cls(loaded, compiler, bus=rt.bus, timeout=rt.config.local_timeout)

    from_config = for_runtime

    @property
    def model_name(self) -> str:
        return self.loaded.name

    # --- prompts -----------------------------------------------------------------------------

    def encode_messages(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat, with the generation prompt, through the model's chat template."""
        tok = self.loaded.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        ids: list[int] = tok(text, add_special_tokens=False)["input_ids"]
        return ids

    @staticmethod
    def schema_messages(
        messages: list[dict[str, str]], schema: CompiledSchema
    ) -> list[dict[str, str]]:
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
        before a token the meter's reservation (``max_out``) no longer covers.

        Raises
        ------
        BudgetExceededError
            From ``meter``: the prompt or the next token would cross the ceiling.
        GrammarDeadEndError
            The grammar allowed no token (escalate; do not retry).
        TierTimeoutError
            Past ``request.timeout`` (or the tier's default).
        SchemaCompileError, SchemaCompileTimeout
            The schema has no local grammar (the router skips the tier on these).
        """
        if request.max_tokens < 1:
            msg = f"max_tokens must be at least 1, got {request.max_tokens}"
            raise RequestError(msg, workflow_id=request.workflow_id, tier=self.name)
        grammar = request.schema.grammar
        if not isinstance(grammar, LocalGrammar):
            err = request.schema.errors.get("grammar")
            if isinstance(err, CoreasonError):  # a fresh instance: the recorded one is shared
                raise type(err)(
                    err.message, workflow_id=request.workflow_id, tier=self.name
                ) from err
            msg = f"schema {request.schema.spec.name!r} has no local grammar"
            raise SchemaCompileError(msg, workflow_id=request.workflow_id, tier=self.name)
        messages = self.schema_messages(request.messages, request.schema)
        run = self._decode(
            self.encode_messages(messages),
            grammar=grammar,
            max_new=request.max_tokens,
            temperature=request.temperature,
            seed=request.seed,
            meter=meter,
            timeout=request.timeout,
            workflow_id=request.workflow_id,
        )
        return self._output(run)

    def complete_text(
        self,
        messages: list[dict[str, str]],
        max_tokens: int,
        grammar: LocalGrammar | CompiledSchema | None = None,
        on_delta: Callable[[str], None] | None = None,
        *,
        temperature: float = 0.0,
        seed: int | None = None,
        meter: Meter | None = None,
        timeout: float | None = None,
        workflow_id: str | None = None,
        ignore_eos: bool = False,
    ) -> TierOutput:
        """Chat completion, unconstrained unless ``grammar`` is given (used by ``coreason serve``).

        ``on_delta`` receives text deltas as they are decoded (every ``stream_every`` tokens).
        ``ignore_eos`` keeps decoding to ``max_tokens`` (benchmarks compare equal lengths).
        """
        if max_tokens < 1:
            msg = f"max_tokens must be at least 1, got {max_tokens}"
            raise RequestError(msg, workflow_id=workflow_id, tier=self.name)
        if isinstance(grammar, CompiledSchema):
            if not isinstance(grammar.grammar, LocalGrammar):
                msg = f"schema {grammar.spec.name!r} has no local grammar"
                raise SchemaCompileError(msg, workflow_id=workflow_id, tier=self.name)
            grammar = grammar.grammar
        run = self._decode(
            self.encode_messages(messages),
            grammar=grammar,
            max_new=max_tokens,
            temperature=temperature,
            seed=seed,
            meter=meter or UnmeteredMeter(),
            timeout=timeout,
            workflow_id=workflow_id,
            on_delta=on_delta,
            ignore_eos=ignore_eos,
        )
        return self._output(run)

    def _output(self, run: _Run) -> TierOutput:
        text = self.loaded.tokenizer.decode(run.tokens, skip_special_tokens=True)
        return TierOutput(
            text=text,
            tokens_in=run.prompt_tokens,
            tokens_out=len(run.tokens),
            model=self.loaded.name,
            finish_reason=run.finish,
            extra={
                "revision": self.loaded.revision,
                "reused_tokens": run.reused,
                "prefill_tokens": run.prompt_tokens - run.reused,
                "seconds": run.seconds,
                "mask_seconds": run.mask_seconds,
                "forward_seconds": run.forward_seconds,
                "prefill_seconds": run.prefill_seconds,
            },
        )

    # --- decoding ----------------------------------------------------------------------------

    def _decode(
        self,
        prompt: list[int],
        *,
        grammar: LocalGrammar | None,
        max_new: int,
        temperature: float,
        seed: int | None,
        meter: Meter,
        timeout: float | None,
        workflow_id: str | None,
        on_delta: Callable[[str], None] | None = None,
        ignore_eos: bool = False,
    ) -> _Run:
        import numpy as np
        import torch

        info = self.info
        assert info is not None  # built from the LoadedModel in __init__
        eos = info.eos_token_id
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        matcher = grammar.matcher(info) if grammar is not None else None
        words = (info.vocab_size + 31) // 32
        bitmask = np.zeros(words, dtype=np.int32)
        gen = torch.Generator().manual_seed(seed if seed is not None else 0)
        tokens: list[int] = []
        finish = "length"
        mask_seconds = forward_seconds = prefill_seconds = 0.0
        streamed = ""
        started = time.perf_counter()

        def fail(msg: str, exc: type[CoreasonError]) -> CoreasonError:
            return exc(msg, workflow_id=workflow_id, tier=self.name)

        def flush(final: bool = False) -> None:
            nonlocal streamed
            if on_delta is None and self.bus is None:
                return
            text = self.loaded.tokenizer.decode(tokens, skip_special_tokens=True)
            if not final:
                text = text.rstrip("\ufffd")  # hold back a half-decoded character
            delta = text[len(streamed) :]
            if not delta:
                return
            streamed = text
            if on_delta is not None:
                on_delta(delta)
            if self.bus is not None:
                self.bus.emit(
                    EventType.TOKENS,
                    workflow_id=workflow_id,
                    source=self.name,
                    tier=self.name,
                    delta=delta,
                    tokens=len(tokens),
                )

        meter.charge(tokens_in=len(prompt))  # may raise BudgetExceededError: let it
        # A meter that can checkpoint (a pause or abort gate) is checked inside every forward
        # pass too, at each layer boundary: a pause lands within a layer, not a token.
        check = getattr(meter, "checkpoint", None)
        check = check if callable(check) else None
        with self._lock, torch.inference_mode():
            cache, reused = self.prefix_cache.lookup(prompt)
            if reused and self.bus is not None:
                self.bus.emit(
                    EventType.PREFIX_REUSED,
                    workflow_id=workflow_id,
                    source=self.name,
                    reused=reused,
                    prefill=len(prompt) - reused,
                )
            model = self.loaded.model
            device = self.loaded.device
            fed = list(prompt)
            consistent = False  # a forward pass cut short leaves layers of unequal length
            try:
                t0 = time.perf_counter()
                logits = self._forward(model, prompt[reused:], cache, device, check)
                prefill_seconds = time.perf_counter() - t0
                consistent = True
                while True:
                    if time.monotonic() > deadline:
                        msg = f"the local tier passed its timeout after {len(tokens)} tokens"
                        raise fail(msg, TierTimeoutError)
                    if matcher is not None:
                        t0 = time.perf_counter()
                        matcher.unsafe_compute_mask_ptr(bitmask.ctypes.data, bitmask.nbytes)
                        allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")
                        allowed = allowed[: logits.shape[-1]].astype(bool)
                        if matcher.is_error():
                            msg = f"grammar error: {matcher.get_error()}"
                            raise fail(msg, GrammarDeadEndError)
                        n_allowed = int(allowed.sum())
                        if n_allowed == 0:
                            msg = f"the grammar allows no token after {len(tokens)} tokens"
                            raise fail(msg, GrammarDeadEndError)
                        if n_allowed == 1 and allowed[eos] and matcher.is_accepting():
                            finish = "stop"  # only EOS is left: done without another pass
                            break
                        logits = logits.masked_fill(
                            torch.from_numpy(~allowed).to(logits.device), float("-inf")
                        )
                        mask_seconds += time.perf_counter() - t0
                    if ignore_eos:
                        logits[eos] = float("-inf")
                    if len(tokens) >= max_new:
                        finish = "length"
                        break
                    if meter.max_out <= 0:
                        # Stop *before* the token that would cross the ceiling: a meter that
                        # can check ahead raises without charging a token never produced.
                        check = getattr(meter, "check", None)
                        if callable(check):
                            check(tokens_out=1)
                        else:
                            meter.charge(tokens_out=1)
                        msg = "the budget reservation allows no more output tokens"
                        raise BudgetExceededError(msg, workflow_id=workflow_id, tier=self.name)
                    token = self._choose(logits, temperature, gen)
                    meter.charge(tokens_out=1)
                    tokens.append(token)
                    if matcher is not None:
                        t0 = time.perf_counter()
                        consumed = matcher.consume_token(token)
                        mask_seconds += time.perf_counter() - t0
                        if not consumed:
                            msg = f"grammar rejected token {token}: {matcher.get_error()}"
                            raise fail(msg, GrammarDeadEndError)
                    if len(tokens) % self.stream_every == 0:
                        flush()
                    if token == eos and not ignore_eos:
                        tokens.pop()
                        finish = "stop"
                        break
                    if matcher is not None and matcher.is_stopped():
                        finish = "stop"
                        break
                    if len(tokens) >= max_new:
                        if matcher is not None and matcher.is_accepting():
                            finish = "stop"
                        break
                    consistent = False
                    t0 = time.perf_counter()
                    logits = self._forward(model, [token], cache, device, check)
                    forward_seconds += time.perf_counter() - t0
                    fed.append(token)
                    consistent = True
            finally:
                if consistent:
                    self.prefix_cache.store(fed, cache)
        flush(final=True)
        return _Run(
            tokens,
            finish,
            len(prompt),
            reused,
            time.perf_counter() - started,
            mask_seconds,
            forward_seconds,
            prefill_seconds,
        )

    @staticmethod
    def _forward(
        model: Any, ids: list[int], cache: Any, device: str, check: Callable[[], None] | None
    ) -> Any:
        """Next-token logits; ``check`` runs at every layer boundary and inside the head."""
        import torch

        gate = LayerGate.for_model(model)
        with gate.checking(check):
            return gate.last_logits(torch.tensor([ids], dtype=torch.long, device=device), cache)

    @staticmethod
    def _choose(logits: Any, temperature: float, gen: Any) -> int:
        import torch

        if temperature <= 0:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits / temperature, dim=-1).cpu()
        return int(torch.multinomial(probs, 1, generator=gen).item())

"""One decode session: tokens, an explicit KV cache, RNG and grammar state, pause and inject."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from coreason_runtime._events import EventType
from coreason_runtime._exceptions import DecodeError, RequestError, SessionStateError
from coreason_runtime.decode._kv import KVSnapshot, crop_to, new_cache
from coreason_runtime.decode._sampler import Sampler

if TYPE_CHECKING:
    import torch

    from coreason_runtime.decode._engine import DecodeEngine

__all__ = ["Checkpoint", "DecodeSession", "SessionState", "Step"]

_ids = itertools.count(1)


class SessionState(StrEnum):
    """Where a session is: not started, runnable, parked, or done."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"


class Origin(StrEnum):
    """Who put a token in the context."""

    PROMPT = "prompt"
    GENERATED = "generated"
    INJECTED = "injected"
    REPAIRED = "repaired"


class _Interrupted(Exception):
    """Raised by a layer pre-hook to abandon a forward pass at a layer boundary."""


@dataclass(frozen=True)
class Step:
    """One line of a session's output, with absolute token offsets ``[start, end)``."""

    index: int
    start: int
    end: int
    text: str
    char_start: int
    char_end: int


@dataclass(frozen=True)
class Checkpoint:
    """Everything needed to put a session back exactly: tokens, KV, RNG and grammar state."""

    tokens: tuple[int, ...]
    origins: tuple[Origin, ...]
    kv: KVSnapshot
    rng: torch.Tensor
    matcher: Any
    next_logits: torch.Tensor | None
    n_generated: int
    state: SessionState
    finish_reason: str | None
    prefilled: bool

    @property
    def offset(self) -> int:
        return len(self.tokens)


_TOKEN, _INTERRUPTED, _FINISHED, _PREFILLED = "token", "interrupted", "finished", "prefilled"


class DecodeSession:
    """A reasoning chain decoded step by step under the runtime's control.

    ``stop`` strings finish the session; ``pause_on`` strings park it (a tool call: inject
    the result with :meth:`resume` and decoding goes on).

    The session owns its KV cache (a transformers ``DynamicCache``), its sampler's
    ``torch.Generator`` and, optionally, an llguidance ``LLMatcher``. Between public calls
    the cache holds exactly ``tokens`` and ``next_logits`` is the model's distribution for
    the next position, so pausing, injecting and splicing never recompute the context.

    Create sessions with :meth:`DecodeEngine.session`; drive them with :meth:`run` (this
    thread) or :meth:`DecodeEngine.submit` (the engine's thread, by priority).
    """

    def __init__(
        self,
        engine: DecodeEngine,
        prompt_ids: Sequence[int],
        *,
        priority: int = 0,
        sampler: Sampler | None = None,
        max_new_tokens: int = 256,
        min_new_tokens: int = 0,
        stop: Sequence[str] = (),
        pause_on: Sequence[str] = (),
        grammar: str | None = None,
        workflow_id: str | None = None,
        name: str | None = None,
    ) -> None:
        if not prompt_ids:
            msg = "a decode session needs at least one prompt token"
            raise RequestError(msg)
        if max_new_tokens < 1:
            msg = f"max_new_tokens must be >= 1, got {max_new_tokens}"
            raise RequestError(msg)
        self.engine = engine
        self.id = name or f"s{next(_ids)}"
        self.workflow_id = workflow_id
        self._priority = priority
        self.sampler = sampler or Sampler()
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens
        self.stop = tuple(stop)
        self.pause_on = tuple(pause_on)
        self._tokens: list[int] = [int(t) for t in prompt_ids]
        self._origins: list[Origin] = [Origin.PROMPT] * len(self._tokens)
        self.prompt_len = len(self._tokens)
        self.cache = new_cache(engine.model.config)
        self.generator = self.sampler.generator()
        self.grammar = grammar
        self.matcher = engine.new_matcher(grammar) if grammar else None
        self.next_logits: torch.Tensor | None = None
        self.n_generated = 0
        self.finish_reason: str | None = None
        self._prefilled = False
        self._state = SessionState.CREATED
        self._cv = threading.Condition()
        self._executing = False
        self._pause_requested = False
        self._pause_t0 = 0.0
        self._interrupt = threading.Event()
        self._parked = threading.Event()
        self.preempted = False
        self.stream = engine.new_stream(priority)
        self.last_pause_latency: float | None = None

    # --- read-only views ---------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def priority(self) -> int:
        return self._priority

    @priority.setter
    def priority(self, value: int) -> None:
        self._priority = value
        self.engine._reschedule()

    @property
    def tokens(self) -> tuple[int, ...]:
        return tuple(self._tokens)

    @property
    def origins(self) -> tuple[Origin, ...]:
        return tuple(self._origins)

    @property
    def output_ids(self) -> tuple[int, ...]:
        """Tokens after the prompt: generated, injected and repaired."""
        return tuple(self._tokens[self.prompt_len :])

    @property
    def output_text(self) -> str:
        return self.engine.text.text(self._tokens[self.prompt_len :])

    @property
    def text(self) -> str:
        """The whole context, prompt included."""
        return self.engine.text.text(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def char_span_to_tokens(
        self, start: int, end: int, *, base: int | None = None
    ) -> tuple[int, int]:
        """Absolute token span covering characters ``[start, end)`` of the text from ``base``.

        ``base`` is a token offset (default: the end of the prompt, i.e. ``output_text``).
        """
        base = self.prompt_len if base is None else base
        first, last = self.engine.text.char_to_token_span(self._tokens[base:], start, end)
        return base + first, base + last

    def steps(self) -> list[Step]:
        """The output split into lines, each with its absolute token span."""
        text, spans = self.engine.text.spans(self._tokens[self.prompt_len :])
        out: list[Step] = []
        pos = 0
        for line in text.splitlines(keepends=True):
            c0, c1 = pos, pos + len(line)
            pos = c1
            if not line.strip():
                continue
            first = next(i for i, (_, e) in enumerate(spans) if e > c0)
            last = max(i for i, (s, _) in enumerate(spans) if s < c1)
            out.append(
                Step(
                    len(out),
                    self.prompt_len + first,
                    self.prompt_len + last + 1,
                    line.rstrip("\n"),
                    c0,
                    c1,
                )
            )
        return out

    # --- events -----------------------------------------------------------------------------

    def _emit(self, event: EventType, /, **data: Any) -> None:
        self.engine.bus.emit(
            event, workflow_id=self.workflow_id, source=f"decode:{self.id}", session=self.id, **data
        )

    # --- control ----------------------------------------------------------------------------

    def _begin(self) -> None:
        with self._cv:
            if self._state is SessionState.FINISHED:
                msg = f"session {self.id} is finished; it cannot be started again"
                raise SessionStateError(msg)
            if self._state is SessionState.PAUSED:
                msg = f"session {self.id} is paused; call resume() first"
                raise SessionStateError(msg)
            if self._state is not SessionState.CREATED:
                return
            self._state = SessionState.RUNNING
        self._emit(
            EventType.DECODE_STARTED,
            offset=len(self._tokens),
            prompt_tokens=self.prompt_len,
            priority=self._priority,
        )

    def pause(self, *, wait: bool = True, timeout: float | None = 10.0) -> float:
        """Park the session at the next layer boundary; returns the pause latency in seconds.

        A forward pass in flight is abandoned and its partial KV cropped back to the last
        committed token, and the sampler's RNG rewound, so resuming reproduces the same
        tokens. Raises :class:`SessionStateError` on a finished session.
        """
        t0 = time.perf_counter()
        with self._cv:
            if self._state is SessionState.FINISHED:
                msg = f"session {self.id} is finished; there is nothing to pause"
                raise SessionStateError(msg)
            if self._state is SessionState.PAUSED:
                return 0.0
            self._parked.clear()
            self._pause_requested = True
            self._pause_t0 = t0
            self._interrupt.set()
            if not self._executing:
                self._park(in_forward=False)
        if wait and not self._parked.wait(timeout):
            msg = f"session {self.id} did not reach a pause point within {timeout} s"
            raise DecodeError(msg)
        return time.perf_counter() - t0

    def _park(self, *, in_forward: bool) -> None:
        """Under ``_cv``: enter PAUSED (or stay FINISHED) and wake pause() waiters."""
        self._pause_requested = False
        self._interrupt.clear()
        if self._state is not SessionState.FINISHED:
            self._state = SessionState.PAUSED
            self.last_pause_latency = time.perf_counter() - self._pause_t0
            self._emit(
                EventType.DECODE_PAUSED,
                offset=len(self._tokens),
                reason="pause",
                in_forward=in_forward,
                latency_ms=1000 * self.last_pause_latency,
            )
        self._parked.set()
        self._cv.notify_all()

    def resume(self, ctx_delta: str | Sequence[int] | None = None) -> None:
        """Make a paused session runnable again, first prefilling ``ctx_delta`` if given.

        Only the injected tokens go through the model; the kept cache is reused as is.
        Raises :class:`SessionStateError` unless the session is paused.
        """
        with self._cv:
            if self._state is not SessionState.PAUSED:
                msg = f"resume() needs a paused session; {self.id} is {self._state.value}"
                raise SessionStateError(msg)
        if ctx_delta is not None:
            self.inject(ctx_delta)
        with self._cv:
            self._state = SessionState.RUNNING
            self._cv.notify_all()
        self._emit(EventType.DECODE_RESUMED, offset=len(self._tokens))
        self.engine._reschedule()

    def inject(self, ctx_delta: str | Sequence[int]) -> tuple[int, int]:
        """Append text or token ids to the context of a paused (or not yet started) session.

        Returns the absolute ``[start, end)`` span of the injected tokens.
        """
        ids = (
            self.engine.encode(ctx_delta)
            if isinstance(ctx_delta, str)
            else [int(t) for t in ctx_delta]
        )
        with self._cv:
            if self._state is SessionState.FINISHED:
                msg = f"session {self.id} is finished; nothing can be injected into it"
                raise SessionStateError(msg)
            if self._state is SessionState.RUNNING or self._executing:
                msg = f"pause session {self.id} before injecting into it"
                raise SessionStateError(msg)
            if not ids:
                msg = "nothing to inject: ctx_delta is empty"
                raise RequestError(msg)
            self._executing = True
        start = len(self._tokens)
        t0 = time.perf_counter()
        try:
            with self.engine.lock:
                if self._prefilled:
                    try:
                        self.next_logits = self.engine.forward(self, ids, interruptible=False)
                    except Exception as e:
                        crop_to(self.cache, start)
                        msg = f"injecting {len(ids)} tokens into {self.id} failed: {e}"
                        raise DecodeError(msg) from e
                self._tokens.extend(ids)
                self._origins.extend([Origin.INJECTED] * len(ids))
        finally:
            with self._cv:
                self._executing = False
        self._emit(
            EventType.DECODE_INJECTED,
            start=start,
            end=len(self._tokens),
            n_tokens=len(ids),
            prefill_ms=1000 * (time.perf_counter() - t0),
        )
        return start, len(self._tokens)

    # --- checkpoints -------------------------------------------------------------------------

    def _require_idle(self, what: str) -> None:
        if self._executing:
            msg = f"pause session {self.id} before {what}"
            raise SessionStateError(msg)

    def checkpoint(self) -> Checkpoint:
        """Copy tokens, KV, RNG state and grammar state; cheap to restore later."""
        with self.engine.lock, self._cv:
            self._require_idle("taking a checkpoint")
            cp = Checkpoint(
                tokens=tuple(self._tokens),
                origins=tuple(self._origins),
                kv=KVSnapshot.take(self.cache, 0),
                rng=self.generator.get_state(),
                matcher=self.matcher.deep_copy() if self.matcher is not None else None,
                next_logits=None if self.next_logits is None else self.next_logits.clone(),
                n_generated=self.n_generated,
                state=self._state,
                finish_reason=self.finish_reason,
                prefilled=self._prefilled,
            )
        self._emit(EventType.DECODE_CHECKPOINTED, offset=cp.offset)
        return cp

    def restore(self, cp: Checkpoint) -> None:
        """Put the session back exactly as it was at ``cp`` (paused if it was running)."""
        with self.engine.lock, self._cv:
            self._require_idle("restoring a checkpoint")
            self._restore(cp)
            if self._state is SessionState.RUNNING:
                self._state = SessionState.PAUSED
        self._emit(EventType.CHECKPOINT_RESTORED, offset=cp.offset)

    def _restore(self, cp: Checkpoint) -> None:
        self._tokens = list(cp.tokens)
        self._origins = list(cp.origins)
        crop_to(self.cache, 0)
        cp.kv.restore(self.cache)
        self.generator.set_state(cp.rng)
        self.matcher = cp.matcher.deep_copy() if cp.matcher is not None else None
        self.next_logits = None if cp.next_logits is None else cp.next_logits.clone()
        self.n_generated = cp.n_generated
        self._state = cp.state
        self.finish_reason = cp.finish_reason
        self._prefilled = cp.prefilled

    # --- driving -----------------------------------------------------------------------------

    def run(self, max_steps: int | None = None) -> SessionState:
        """Decode on this thread until finished, paused, or ``max_steps`` tokens more."""
        self._begin()
        steps = 0
        while max_steps is None or steps < max_steps:
            result = self._drive_one()
            if result is None:
                break
            steps += result == _TOKEN
        return self._state

    def wait(self, timeout: float | None = None) -> SessionState:
        """Block until the session is finished or paused; returns its state."""
        with self._cv:
            self._cv.wait_for(
                lambda: self._state in (SessionState.FINISHED, SessionState.PAUSED), timeout
            )
            return self._state

    def _drive_one(self) -> str | None:
        """Run one step if runnable. Returns what happened, or None when it must stop."""
        with self._cv:
            if self._state is not SessionState.RUNNING or self._executing:
                return None
            if self._pause_requested:
                self._park(in_forward=False)
                return None
            self._executing = True
        try:
            with self.engine.lock, self.engine.stream_context(self.stream):
                result = self._step()
        finally:
            with self._cv:
                self._executing = False
                if self.state is SessionState.FINISHED:  # _step may have finished it
                    self._pause_requested = False
                    self._parked.set()
                    self._cv.notify_all()
        with self._cv:
            if self._pause_requested:
                self._park(in_forward=result == _INTERRUPTED)
                return None
            if result == _INTERRUPTED:  # preempted by a more urgent session, still runnable
                self._interrupt.clear()
                self.preempted = True
                return None
        if result == _FINISHED:
            self._emit(
                EventType.DECODE_FINISHED,
                offset=len(self._tokens),
                reason=self.finish_reason,
                n_generated=self.n_generated,
            )
            return None
        return result

    def _finish(self, reason: str) -> str:
        with self._cv:
            self._state = SessionState.FINISHED
            self.finish_reason = reason
            self._cv.notify_all()
        return _FINISHED

    def _step(self) -> str:
        """Prefill the prompt or decode one token. Caller holds the model lock."""
        if not self._prefilled:
            try:
                self.next_logits = self.engine.forward(self, self._tokens, interruptible=True)
            except _Interrupted:
                crop_to(self.cache, 0)
                return _INTERRUPTED
            self._prefilled = True
            return _PREFILLED
        if self.n_generated >= self.max_new_tokens:
            return self._finish("length")
        if self.matcher is not None and self.matcher.is_stopped():
            return self._finish("grammar")
        assert self.next_logits is not None
        logits = self.engine.mask_logits(self.matcher, self.next_logits)
        if self.n_generated < self.min_new_tokens:  # too early to stop: mask every stop token
            logits[list(self.engine.stop_ids)] = float("-inf")
        rng = self.generator.get_state()
        tok = self.sampler.sample(logits, self.generator)
        if tok in self.engine.stop_ids:
            return self._finish("eos")
        n = len(self._tokens)
        try:
            self.next_logits = self.engine.forward(self, [tok], interruptible=True)
        except _Interrupted:
            crop_to(self.cache, n)
            self.generator.set_state(rng)
            return _INTERRUPTED
        self._tokens.append(tok)
        self._origins.append(Origin.GENERATED)
        self.n_generated += 1
        if self.matcher is not None:
            self.matcher.consume_token(tok)
        if self.stop and self._hit(self.stop):
            return self._finish("stop")
        if self.pause_on and self._hit(self.pause_on):  # e.g. a tool call: park for a result
            with self._cv:
                self._pause_requested = True
                self._pause_t0 = time.perf_counter()
        return _TOKEN

    def _hit(self, strings: Sequence[str]) -> bool:
        """Did the token just committed complete one of ``strings``?"""
        lo = max(self.prompt_len, len(self._tokens) - 9)
        before = self.engine.text.text(self._tokens[lo:-1])
        after = self.engine.text.text(self._tokens[lo:])
        return any(after.count(s) > before.count(s) for s in strings)

    def __repr__(self) -> str:
        return (
            f"<DecodeSession {self.id} {self._state.value} priority={self._priority} "
            f"tokens={len(self._tokens)} generated={self.n_generated}>"
        )

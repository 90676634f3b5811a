"""One decode session: tokens, an explicit KV cache, RNG and grammar state, pause and inject.

Every local decode of the runtime is a session: a router request on the local tier, a served
completion, a reasoning chain in a notebook. The session decodes one token per step under
the engine's model lock (the token loop is :mod:`._stepping`); a pause, a preemption or an
abort lands at the next decoder-layer boundary (the pass is abandoned and the KV cropped
back), a grammar masks every step, a meter is charged per token, and a deadline covers the
prefill too. Edits from outside the loop (inject, span repair, checkpoints) are in
:mod:`._edit`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from coreason_runtime._controls import ControlState
from coreason_runtime._events import EventType
from coreason_runtime._exceptions import DecodeError, RequestError, SessionStateError
from coreason_runtime.decode._closing import Closing
from coreason_runtime.decode._edit import Checkpoint, SessionEdit, SessionEditing
from coreason_runtime.decode._fields import (
    FINISHED,
    INTERRUPTED,
    TOKEN,
    Origin,
    SessionState,
    Step,
    Timings,
)
from coreason_runtime.decode._grammar import GrammarMask
from coreason_runtime.decode._kv import crop_to, new_cache
from coreason_runtime.decode._sampler import Sampler
from coreason_runtime.decode._stepping import SessionSteps
from coreason_runtime.decode._tiering import SessionTiering

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache

    from coreason_runtime.decode._engine import DecodeEngine
    from coreason_runtime.decode._store import BlockStore
    from coreason_runtime.tensor._types import Meter

__all__ = ["Checkpoint", "DecodeSession", "Origin", "SessionEdit", "SessionState", "Step"]

_ids = itertools.count(1)


class DecodeSession(SessionSteps, SessionEditing, SessionTiering):
    """A reasoning chain decoded step by step under the runtime's control.

    ``stop`` strings finish the session; ``pause_on`` strings park it (a tool call: inject
    the result with :meth:`resume` and decoding goes on).

    The session owns its KV cache (a transformers ``DynamicCache``, optionally starting from
    a reused prefix), its sampler's ``torch.Generator`` and, optionally, a
    :class:`GrammarMask`. Between public calls the cache holds ``tokens`` and ``next_logits``
    is the model's distribution for the next position; only a session that finished on its
    last token leaves that token out of the cache until something needs it (:meth:`sync`),
    saving one forward pass per request.

    Create sessions with :meth:`DecodeEngine.session`; drive them with :meth:`run` (this
    thread) or :meth:`DecodeEngine.submit` (the engine's thread, by priority).

    Parameters
    ----------
    meter:
        Charged ``tokens_in`` for the prompt once, and ``tokens_out=1`` per sampled token
        (an end-of-sequence token included); ``meter.check(tokens_out=1)`` runs before each
        sample, so a budget stops decoding *before* a token it cannot pay for.
    deadline:
        A ``time.monotonic()`` instant; past it the session raises
        :class:`TierTimeoutError`, checked at every layer boundary (prefill included).
    prefix:
        A cache already holding the first ``n`` prompt tokens and ``n`` (a prefix cache hit).
    on_token:
        Called on the driving thread, outside the model lock, after each committed token.
    kv:
        A :class:`~coreason_runtime.decode.BlockStore` that holds this session's KV while it
        is parked (see :meth:`demote`); with the store's ``demote_on_pause``, a pause hands
        the KV over as soon as the session parks on its own thread.
    closing:
        With a grammar: close the value before the tokens run out (``max_new_tokens`` or the
        meter's grant) and close a string or container that loops (:class:`Closing`); a
        :class:`Closing` to tune it, ``False`` to decode under the bare grammar.
        ``closing.closed`` says whether it changed the output.
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
        grammar: str | GrammarMask | None = None,
        workflow_id: str | None = None,
        name: str | None = None,
        meter: Meter | None = None,
        deadline: float | None = None,
        prefix: tuple[DynamicCache, int] | None = None,
        on_token: Callable[[DecodeSession], None] | None = None,
        kv: BlockStore | None = None,
        closing: bool | Closing = True,
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
        self.meter = meter
        self.deadline = deadline
        self.on_token = on_token
        self.kv = kv
        self._kv_held = None
        self._tokens: list[int] = [int(t) for t in prompt_ids]
        self._origins: list[Origin] = [Origin.PROMPT] * len(self._tokens)
        self.prompt_len = len(self._tokens)
        cache, reused = prefix if prefix is not None else (new_cache(engine.model.config), 0)
        self.cache = cache
        self.reused_tokens = max(0, min(reused, self.prompt_len - 1))
        crop_to(cache, self.reused_tokens)  # at least one prompt token is left to prefill
        self._kv_len = self.reused_tokens  # tokens the cache holds
        self.generator = self.sampler.generator()
        if isinstance(grammar, str):
            grammar = GrammarMask(engine.new_matcher(grammar), engine.info)
        self.grammar = grammar
        if closing is True:
            self.closing = Closing(engine.info) if grammar is not None else None
        else:
            self.closing = closing or None
        self.next_logits: torch.Tensor | None = None
        self.n_generated = 0
        self.finish_reason: str | None = None
        self.timings = Timings()
        self._prefilled = False
        self._prompt_charged = False
        self._started = False
        self._state = SessionState.CREATED
        self._cv = threading.Condition()
        self._executing = False
        self._pause_requested = False
        self._cancel_reason: str | None = None
        self._pause_t0 = 0.0
        self._interrupt = threading.Event()
        self._parked = threading.Event()
        self.preempted = False
        self.stream = engine.new_stream(priority)
        self.last_pause_latency: float | None = None
        self.error: BaseException | None = None  # what finished the session, if it failed

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
        self.engine.reschedule()

    @property
    def executing(self) -> bool:
        """A step is running on some thread right now."""
        return self._executing

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

    @property
    def kv_length(self) -> int:
        """Tokens the KV cache holds (one less than ``len(self)`` while a last token waits)."""
        return self._kv_len

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
        lines = self.engine.text.lines(self._tokens[self.prompt_len :])
        return [
            Step(i, self.prompt_len + t0, self.prompt_len + t1, text, c0, c1)
            for i, (t0, t1, text, c0, c1) in enumerate(lines)
        ]

    # --- events -----------------------------------------------------------------------------

    def emit(self, event: EventType, /, **data: Any) -> None:
        """Publish ``event`` for this session (its workflow, source and id filled in)."""
        self.engine.bus.emit(
            event, workflow_id=self.workflow_id, source=f"decode:{self.id}", session=self.id, **data
        )

    # --- control ----------------------------------------------------------------------------

    def begin(self, *, paused_ok: bool = False) -> None:
        """Make a new session runnable (idempotent); announces ``decode.started`` once.

        Raises :class:`SessionStateError` on a finished session, and on a paused one unless
        ``paused_ok`` (then it stays paused).
        """
        with self._cv:
            if self._state is SessionState.FINISHED:
                msg = f"session {self.id} is finished; it cannot be started again"
                raise SessionStateError(msg)
            if self._state is SessionState.PAUSED and not paused_ok:
                msg = f"session {self.id} is paused; call resume() first"
                raise SessionStateError(msg)
            if self._state is SessionState.CREATED:
                self._state = SessionState.RUNNING
            announce, self._started = not self._started, True
        if announce:
            self.emit(
                EventType.DECODE_STARTED,
                offset=len(self._tokens),
                prompt_tokens=self.prompt_len,
                priority=self._priority,
                precision=self.engine.precision,
            )

    def control(self, state: ControlState) -> None:
        """React to a workflow control (``rt.controls``): park, or cancel on an abort."""
        if state is ControlState.ABORTED:
            self.cancel("aborted")
        elif state.holds and self._state is not SessionState.FINISHED:
            self.pause(wait=False)

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
            parked_here = not self._executing
            if parked_here:
                self._park(in_forward=False)
        if parked_here and wait:
            self._after_park()
        if wait and not self._parked.wait(timeout):
            msg = f"session {self.id} did not reach a pause point within {timeout} s"
            raise DecodeError(msg)
        return time.perf_counter() - t0

    def interrupt(self) -> None:
        """Abandon the forward pass in flight at its next layer boundary (the engine
        preempting this session for a more urgent one); the session stays runnable."""
        self._interrupt.set()

    def cancel(self, reason: str = "cancelled") -> None:
        """Finish the session at the next layer boundary with ``finish_reason = reason``."""
        with self._cv:
            if self._state is SessionState.FINISHED:
                return
            if self._executing:
                self._cancel_reason = reason
                self._interrupt.set()
                return
            self._finish(reason)
        self._announce_finish()

    def _park(self, *, in_forward: bool) -> None:
        """Under ``_cv``: enter PAUSED (or stay FINISHED) and wake pause() waiters."""
        self._pause_requested = False
        self._interrupt.clear()
        if self._state is not SessionState.FINISHED:
            self._state = SessionState.PAUSED
            self.last_pause_latency = time.perf_counter() - self._pause_t0
            self.emit(
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
        self.prefetch()  # a demoted KV starts coming back before the next step needs it
        self.emit(EventType.DECODE_RESUMED, offset=len(self._tokens))
        self.engine.reschedule()

    # --- driving -----------------------------------------------------------------------------

    def run(self, max_steps: int | None = None) -> SessionState:
        """Decode on this thread until finished, paused, or ``max_steps`` tokens more.

        Raises whatever stopped decoding (a crossed budget, a passed deadline, a grammar dead
        end); the session is then finished with ``finish_reason`` naming the error. A paused
        session returns at once, still paused.
        """
        self.begin(paused_ok=True)
        steps = 0
        while max_steps is None or steps < max_steps:
            result = self.step()
            if result is None:
                break
            steps += result == TOKEN
        return self._state

    def wait(self, timeout: float | None = None) -> SessionState:
        """Block until the session is finished or paused; returns its state."""
        with self._cv:
            self._cv.wait_for(
                lambda: self._state in (SessionState.FINISHED, SessionState.PAUSED), timeout
            )
            return self._state

    def step(self) -> str | None:
        """Run one step if runnable. Returns what happened, or None when it must stop."""
        if not self.enter_step():
            return None
        try:
            # a budget lease waits for room here, outside the model lock (see cover_next)
            if self.cover_next():
                with self.engine.lock, self.engine.stream_context(self.stream):
                    result = self._step()
            else:
                result = INTERRUPTED
        except BaseException as e:
            self.fail_step(e)
            raise
        return self.leave_step(result)

    def enter_step(self) -> bool:
        """Mark a step as running if the session is runnable (a requested pause parks it
        instead). Every step, alone or in a batch, goes enter → step → leave (or fail)."""
        with self._cv:
            if self._state is not SessionState.RUNNING or self._executing:
                return False
            parked = self._pause_requested
            if parked:
                self._park(in_forward=False)
            else:
                self._executing = True
        if parked:
            self._after_park()
            return False
        try:
            self._kv_ready()  # a demoted KV comes back first (waiting only for what is on disk)
        except BaseException as e:
            self.fail_step(e)
            raise
        return True

    def fail_step(self, error: BaseException) -> None:
        """The step raised ``error``: the session finishes with it as its reason (kept in
        :attr:`error` for whoever waits on a session another thread drives)."""
        with self._cv:
            self._executing = False
            self.error = error
            self._finish(f"error: {type(error).__name__}: {error}")
        self._announce_finish()

    def leave_step(self, result: str) -> str | None:
        """End a step that returned ``result``: park, finish or stay runnable; call
        ``on_token``. Returns ``result``, or None when the session must stop stepping."""
        parked = False
        with self._cv:
            self._executing = False
            if self._cancel_reason is not None and self.state is not SessionState.FINISHED:
                result = self._finish(self._cancel_reason)
            if self.state is SessionState.FINISHED:
                self._pause_requested = False
                self._parked.set()
                self._cv.notify_all()
            elif self._pause_requested:
                self._park(in_forward=result == INTERRUPTED)
                parked = True
            elif result == INTERRUPTED:  # preempted by a more urgent session, still runnable
                self._interrupt.clear()
                self.preempted = True
                return None
        if parked:
            self._after_park()
            return None
        if result == FINISHED:
            self._announce_finish()
            return None
        if result == TOKEN and self.on_token is not None:
            self.on_token(self)
        return result

    def _after_park(self) -> None:
        """On the thread that parked the session: hand its KV to the block store if the
        store says so (the session is idle, so this thread has time)."""
        if self.kv is not None and self.kv.demote_on_pause:
            self._demote(strict=False)

    def _finish(self, reason: str) -> str:
        if self._kv_held is not None:  # a store may now evict what it held for this session
            self._kv_held.release()
        with self._cv:
            self._state = SessionState.FINISHED
            self.finish_reason = reason
            self._cancel_reason = None
            self._interrupt.clear()
            self._parked.set()
            self._cv.notify_all()
        return FINISHED

    def _announce_finish(self) -> None:
        self.emit(
            EventType.DECODE_FINISHED,
            offset=len(self._tokens),
            reason=self.finish_reason,
            n_generated=self.n_generated,
        )

    def __repr__(self) -> str:
        return (
            f"<DecodeSession {self.id} {self._state.value} priority={self._priority} "
            f"tokens={len(self._tokens)} generated={self.n_generated}>"
        )

"""The DecodeEngine: owns the model lock and runs the most urgent runnable session."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from coreason_runtime._events import EventBus, EventType
from coreason_runtime._exceptions import DecodeError, RequestError, ServerBusyError
from coreason_runtime.decode._batch import pick_batch, step_batch
from coreason_runtime.decode._fields import SessionFields
from coreason_runtime.decode._grammar import GrammarMask, TokenizerInfo, new_matcher, tokenizer_info
from coreason_runtime.decode._kv import new_cache
from coreason_runtime.decode._offsets import TokenText
from coreason_runtime.decode._session import DecodeSession, SessionState
from coreason_runtime.models._gate import LayerGate
from coreason_runtime.sched._jobs import Preemptible as SchedPreemptible

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache

    from coreason_runtime._coordinator import Coordinator

__all__ = ["DecodeEngine", "Preemptible", "TokenGroups"]

logger = logging.getLogger("coreason_runtime.decode")


@runtime_checkable
class Preemptible(SchedPreemptible, Protocol):
    """The scheduler's :class:`~coreason_runtime.sched.Preemptible` with a ``priority``:
    what the engine parks and wakes (decode sessions; simulations and tool runs alike).

    ``pause`` returns how long parking took (seconds); ``resume`` may take a context delta to
    prefill before decoding goes on.
    """

    @property
    def priority(self) -> int: ...


@dataclass(frozen=True)
class TokenGroups:
    """Per-token-group precision: which forward passes use the full-precision copies that a
    precision map keeps of its most sensitive layers (``PrecisionMap.sensitive``).

    A step whose sampled distribution had at least ``entropy`` nats (the cheap run-time
    probe) runs the next forward pass at full precision, and so does every forward pass of
    an edit (a span being repaired).
    """

    entropy: float = 2.0


def precision_label(pmap: Any) -> str:
    """``fp32``, or a one-line summary of the precision map a model was loaded with."""
    if pmap is None or not pmap.modules:
        return "fp32"
    counts = ", ".join(f"{n} {fmt}" for fmt, n in pmap.counts().items())
    v = pmap.validation
    quality = f"; perplexity {100 * v.ppl_increase:+.2f}%" if v is not None else ""
    return f"POPB map: {counts} modules{quality}"


class DecodeEngine:
    """Runs decode sessions over one causal LM, one step at a time, most urgent first.

    The engine holds the model lock: every forward pass of every session goes through
    :meth:`forward` under it. A :class:`~coreason_runtime.models.LayerGate` checks at every
    decoder-layer boundary and between the LM head's row blocks, so a pause (or a more urgent
    session) abandons a forward pass within a fraction of a token step. Sessions submitted
    with :meth:`submit` run on the engine's own thread, highest ``priority`` first; a
    session can also be driven on the caller's thread with :meth:`DecodeSession.run`.

    Parameters
    ----------
    model, tokenizer:
        A transformers causal LM (Llama-like) and its tokenizer.
    bus:
        Where DECODE_*, SPAN_REPAIRED, THUNK_* and VERIFIER_FAILED events go.
    lock:
        The lock that serialises every forward pass on ``model`` (a ``LoadedModel``'s own,
        when the model is shared); a new one by default.
    max_batch:
        The most sessions of the engine's thread stepped together in one forward pass.
    max_sessions:
        The most sessions queued or decoding on the engine's thread; one more submitted is
        refused with :class:`ServerBusyError` (None: no bound).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        bus: EventBus | None = None,
        lock: threading.RLock | None = None,
        max_batch: int = 16,
        max_sessions: int | None = 256,
    ) -> None:
        import torch

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.bus = bus or EventBus()
        self.lock = lock if lock is not None else threading.RLock()
        self.text = TokenText(tokenizer)
        self.device = next(model.parameters()).device
        self.use_streams = self.device.type == "cuda" and torch.cuda.is_available()
        # False: a pause waits for the token step to end (the baseline the benchmark measures)
        self.layer_checks = True
        self.gate = LayerGate.for_model(self.model)
        # set by a precision map that keeps full-precision copies (models._formats)
        self.switch: Any = getattr(self.model, "precision_switch", None)
        self.token_groups: TokenGroups | None = None
        self.precision = precision_label(getattr(self.model, "precision_map", None))
        eos = {tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)}
        for extra in ("<|im_end|>", "<|endoftext|>"):
            tid = tokenizer.convert_tokens_to_ids(extra)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id:
                eos.add(tid)
        flat: set[int] = set()
        for e in eos:
            if isinstance(e, int):
                flat.add(e)
            elif isinstance(e, (list, tuple)):
                flat.update(int(x) for x in e)
        self.stop_ids: frozenset[int] = frozenset(flat)
        self._info: TokenizerInfo | None = None
        self._sessions: list[DecodeSession] = []
        self._sched = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        # continuous batching: how many sessions of the engine's thread step together, and
        # the tokens each workflow was served lately (fairness between workflows)
        self.max_batch = max_batch
        self.max_sessions = max_sessions
        self._served: dict[str | None, int] = {}
        self.largest_batch = 0  # the most sessions one forward pass has stepped together

    @classmethod
    def for_runtime(cls, rt: Coordinator) -> DecodeEngine:
        """The runtime's engine over its default local model (``rt.config.model``)."""
        from coreason_runtime.models import load_model

        loaded = load_model(rt.config.model)
        return cls(loaded.model, loaded.tokenizer, bus=rt.bus, lock=loaded.lock)

    # --- text --------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""
        return [int(t) for t in self.tokenizer.encode(text, add_special_tokens=False)]

    def chat_ids(
        self, user: str, *, system: str | None = None, assistant_prefix: str = ""
    ) -> list[int]:
        """A chat prompt ending where the assistant's answer starts (plus ``assistant_prefix``)."""
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            ids = [int(t) for t in (ids["input_ids"] if isinstance(ids, dict) else ids)]
        else:
            ids = self.encode((f"{system}\n" if system else "") + f"{user}\n")
        extra = self.encode(assistant_prefix) if assistant_prefix else []
        return [int(t) for t in ids] + extra

    # --- grammar -----------------------------------------------------------------------------

    @property
    def info(self) -> TokenizerInfo:
        """The llguidance view of the tokenizer, as wide as the model's logits."""
        if self._info is None:
            width = max(int(self.model.config.vocab_size), len(self.tokenizer))
            info = tokenizer_info(self.tokenizer, n_vocab=width)
            assert info is not None  # built from a tokenizer, never None
            self._info = info
        return self._info

    def new_matcher(self, grammar: str) -> Any:
        """An llguidance LLMatcher for ``grammar`` (Lark, regex or JSON grammar string)."""
        return new_matcher(self.info, grammar)

    def new_mask(self, grammar: str) -> GrammarMask:
        """A :class:`GrammarMask` at the start of ``grammar``."""
        return GrammarMask(self.new_matcher(grammar), self.info)

    # --- streams -----------------------------------------------------------------------------

    def new_stream(self, priority: int) -> Any:
        """A CUDA stream whose hardware priority follows the session's (None on CPU)."""
        if not self.use_streams:
            return None
        import torch

        # lower numbers are more urgent; out-of-range values clamp to the device's range
        return torch.cuda.Stream(device=self.device, priority=-1 if priority > 0 else 0)  # type: ignore[no-untyped-call]

    @contextlib.contextmanager
    def stream_context(self, stream: Any) -> Iterator[None]:
        if stream is None:
            yield
            return
        import torch

        with torch.cuda.stream(stream):
            yield
        stream.synchronize()

    # --- the forward pass --------------------------------------------------------------------

    def forward(
        self,
        session: SessionFields,
        ids: Sequence[int],
        *,
        interruptible: bool,
        high: bool = False,
    ) -> torch.Tensor:
        """Append ``ids`` to ``session.cache``; returns the next-token logits (1-D, float32).

        With ``interruptible`` the session's :meth:`~DecodeSession.layer_check` runs at every
        layer boundary (a pause raises ``Interrupted``; the caller crops the cache back). With
        ``high`` the layers a precision map keeps in two precisions run their fp32 copy.
        """
        if not high or self.switch is None:
            return self._run(session.cache, ids, session if interruptible else None)
        self.switch.high = True
        try:
            return self._run(session.cache, ids, session if interruptible else None)
        finally:
            self.switch.high = False

    def _run(
        self, cache: DynamicCache, ids: Sequence[int], session: SessionFields | None
    ) -> torch.Tensor:
        import torch

        check = None
        if session is not None and self.layer_checks:
            check = session.layer_check()
        with self.lock, torch.no_grad(), self.gate.checking(check):
            # a check at every layer boundary and between the LM head's row blocks
            return self.gate.last_logits(torch.tensor([list(ids)], device=self.device), cache)

    def can_batch(self, sessions: Sequence[SessionFields]) -> bool:
        """Whether these sessions' next tokens can share one forward pass."""
        return self.gate.can_batch([s.cache for s in sessions])

    def forward_batch(
        self,
        sessions: Sequence[SessionFields],
        tokens: Sequence[int],
        *,
        high: bool,
        dropped: Callable[[int, Exception], None],
    ) -> list[torch.Tensor | None]:
        """Append ``tokens[i]`` to ``sessions[i].cache`` for all ``i`` in one forward pass.

        Each session's layer check runs at every layer boundary; one that raises drops that
        session from the pass there (``dropped(i, error)``, its logits None) and the others
        go on. Needs :meth:`can_batch`.
        """
        import torch

        checks = [s.layer_check() if self.layer_checks else None for s in sessions]
        caches = [s.cache for s in sessions]
        switch = self.switch if high else None
        with self.lock, torch.no_grad():
            if switch is not None:
                switch.high = True
            try:
                return self.gate.batch_logits(tokens, caches, checks, dropped)
            finally:
                if switch is not None:
                    switch.high = False

    def prefill(self, ids: Sequence[int]) -> tuple[DynamicCache, torch.Tensor]:
        """A fresh cache holding ``ids`` and the next-token logits: the full-recompute reference."""
        cache = new_cache(self.model.config)
        logits = self._run(cache, ids, None)
        return cache, logits

    # --- sessions ----------------------------------------------------------------------------

    def session(
        self,
        prompt: str | Sequence[int],
        *,
        chat: bool = True,
        system: str | None = None,
        assistant_prefix: str = "",
        **options: Any,
    ) -> DecodeSession:
        """A new session; a string prompt is wrapped in the chat template unless ``chat=False``.

        ``options`` are :class:`DecodeSession`'s (priority, sampler, max_new_tokens, grammar,
        meter, deadline, prefix, ...).
        """
        if isinstance(prompt, str):
            if not prompt:
                msg = "the prompt is empty"
                raise RequestError(msg)
            ids = (
                self.chat_ids(prompt, system=system, assistant_prefix=assistant_prefix)
                if chat
                else self.encode(prompt)
            )
        else:
            ids = [int(t) for t in prompt]
        return DecodeSession(self, ids, **options)

    def generate(self, prompt: str | Sequence[int], **kwargs: Any) -> DecodeSession:
        """Create a session and decode it to the end on this thread."""
        s = self.session(prompt, **kwargs)
        s.run()
        return s

    def submit(self, session: DecodeSession, *, paused_ok: bool = False) -> DecodeSession:
        """Queue ``session`` on the engine's thread, to step in a batch with the others of its
        priority; a more urgent one preempts them. A paused session (``paused_ok``) is queued
        and steps once resumed."""
        if self._closed:
            msg = "this DecodeEngine is closed"
            raise DecodeError(msg)
        if session.engine is not self:
            msg = f"session {session.id} belongs to another engine"
            raise RequestError(msg)
        with self._sched:
            if session not in self._sessions:
                self._refuse_if_full(session)
        session.begin(paused_ok=paused_ok)
        with self._sched:
            if session not in self._sessions:
                self._sessions.append(session)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="coreason-decode", daemon=True
                )
                self._thread.start()
        self.reschedule()
        return session

    def _refuse_if_full(self, session: DecodeSession) -> None:
        """Under ``_sched``: raise :class:`ServerBusyError` when ``max_sessions`` are queued
        or decoding (a bounded queue: never an unbounded wait)."""
        live = [s for s in self._sessions if s.state is not SessionState.FINISHED]
        if self.max_sessions is None or len(live) < self.max_sessions:
            return
        msg = (
            f"the decode engine is full ({len(live)} sessions queued or decoding, at most "
            f"{self.max_sessions}); retry in a moment"
        )
        raise ServerBusyError(msg, tier="local", workflow_id=session.workflow_id)

    def _runnable(self) -> list[DecodeSession]:
        return [s for s in self._sessions if s.state is SessionState.RUNNING and not s.executing]

    def owns(self, session: SessionFields) -> bool:
        """Whether ``session`` was submitted to this engine's thread (and is not finished)."""
        with self._sched:
            return session in self._sessions

    def reschedule(self) -> None:
        """Wake the loop and preempt the running session if a more urgent one is runnable."""
        with self._sched:
            waiting = self._runnable()
            if waiting:
                top = max(w.priority for w in waiting)
                for s in self._sessions:
                    if s.executing and s.priority < top:
                        s.interrupt()
            self._sched.notify_all()

    def _loop(self) -> None:
        last: list[DecodeSession] = []
        while True:
            with self._sched:
                self._sessions = [s for s in self._sessions if s.state is not SessionState.FINISHED]
                while not self._closed and not self._runnable():
                    self._sched.wait(0.5)
                    self._sessions = [
                        s for s in self._sessions if s.state is not SessionState.FINISHED
                    ]
                if self._closed:
                    return
                batch = pick_batch(self._runnable(), self._served, self.max_batch)
            self._announce_preemptions(last, batch)
            try:
                step_batch(self, batch)
            except Exception:  # a step's error finishes its session; never the engine thread
                logger.exception("a batch step failed on the engine thread")
            for s in batch:
                self._served[s.workflow_id] = self._served.get(s.workflow_id, 0) + 1
                if s.preempted:  # abandoned mid-forward for a more urgent session
                    s.emit(
                        EventType.DECODE_PAUSED, offset=len(s), reason="preempted", in_forward=True
                    )
            if len(self._served) > 4 * self.max_batch:  # forget workflows long gone
                self._served = {s.workflow_id: 0 for s in self._sessions}
            last = batch

    def _announce_preemptions(self, last: list[DecodeSession], batch: list[DecodeSession]) -> None:
        """Sessions of the last batch left out of this one were preempted at a token
        boundary; sessions preempted before and chosen now resume."""
        for s in last:
            if s not in batch and s.state is SessionState.RUNNING and not s.preempted:
                s.preempted = True
                s.emit(
                    EventType.DECODE_PAUSED,
                    offset=len(s),
                    reason="preempted",
                    in_forward=False,
                    by=batch[0].id,
                )
        for s in batch:
            if s.preempted:
                s.preempted = False
                s.emit(EventType.DECODE_RESUMED, offset=len(s), reason="rescheduled")

    def close(self) -> None:
        """Stop the engine thread. Idempotent; the model's layer gate stays with the model."""
        with self._sched:
            self._closed = True
            self._sched.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def __repr__(self) -> str:
        return (
            f"<DecodeEngine {type(self.model).__name__} on {self.device} "
            f"sessions={len(self._sessions)}>"
        )

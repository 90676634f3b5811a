"""Changing a session from outside its token loop: edits, injects, checkpoints.

Span repair, thunk splicing and injected context all change a session's tokens and KV the
same way: under :meth:`SessionEditing.edit`, which takes the session exclusively, computes a
token the KV was still missing, and puts everything back if the change fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coreason_runtime._events import EventType
from coreason_runtime._exceptions import DecodeError, RequestError, SessionStateError, SpanError
from coreason_runtime.decode._fields import Origin, SessionFields, SessionState
from coreason_runtime.decode._kv import KVSnapshot, crop_to

if TYPE_CHECKING:
    import torch

    from coreason_runtime.decode._grammar import GrammarMask

__all__ = ["Checkpoint", "SessionEdit", "SessionEditing"]


@dataclass(frozen=True)
class Checkpoint:
    """Everything needed to put a session back exactly: tokens, KV, RNG and grammar state."""

    tokens: tuple[int, ...]
    origins: tuple[Origin, ...]
    kv: KVSnapshot
    rng: torch.Tensor
    grammar: GrammarMask | None
    next_logits: torch.Tensor | None
    n_generated: int
    state: SessionState
    finish_reason: str | None
    prefilled: bool

    @property
    def offset(self) -> int:
        return len(self.tokens)


class SessionEdit:
    """Exclusive access to a session's tokens and KV, from :meth:`SessionEditing.edit`.

    Change the KV with :meth:`crop` and :meth:`forward`, then :meth:`commit` the new tokens;
    if the edit fails, the session is rolled back to how it was.
    """

    def __init__(self, session: SessionEditing, keep_from: int) -> None:
        self.session = session
        self.tokens: list[int] = list(session._tokens)
        self.origins: list[Origin] = list(session._origins)
        self._kv = KVSnapshot.take(session.cache, keep_from) if session._prefilled else None
        self._saved = (
            session.next_logits,
            session.grammar.copy() if session.grammar is not None else None,
            session._kv_len,
        )

    @property
    def kv_length(self) -> int:
        return self.session._kv_len

    def crop(self, length: int) -> None:
        """Cut the KV back to its first ``length`` tokens."""
        crop_to(self.session.cache, length)
        self.session._kv_len = min(self.session._kv_len, length)

    def forward(self, ids: Sequence[int]) -> torch.Tensor:
        """Append ``ids`` to the KV (not interruptible); the next-token logits."""
        engine = self.session.engine  # repaired spans run at full precision with token groups
        logits = engine.forward(
            self.session, ids, interruptible=False, high=engine.token_groups is not None
        )
        self.session._kv_len += len(ids)
        return logits

    def commit(
        self,
        tokens: Sequence[int],
        origins: Sequence[Origin],
        next_logits: torch.Tensor | None,
        *,
        replay_grammar: bool = False,
    ) -> None:
        """Make ``tokens`` the session's context (the KV must hold them all, if prefilled).

        With ``replay_grammar`` the grammar state is rebuilt over the generated and repaired
        tokens; a splice the grammar rejects raises :class:`SpanError` (and rolls back).
        """
        s = self.session
        if len(tokens) != len(origins):
            msg = f"{len(tokens)} tokens but {len(origins)} origins"
            raise DecodeError(msg)
        s._tokens = [int(t) for t in tokens]
        s._origins = list(origins)
        s.next_logits = next_logits
        if s._prefilled:
            s._kv_len = len(s._tokens)
        if replay_grammar and s.grammar is not None:
            _replay_grammar(s.grammar, s._tokens, s._origins, s.id)

    def rollback(self) -> None:
        """Put the session back exactly as it was when the edit began."""
        s = self.session
        s._tokens, s._origins = self.tokens, self.origins
        s.next_logits, s.grammar, s._kv_len = self._saved
        if self._kv is not None:
            self._kv.restore(s.cache)  # crops to where the copy starts, then puts it back


def _replay_grammar(
    grammar: GrammarMask, tokens: Sequence[int], origins: Sequence[Origin], session_id: str
) -> None:
    """Rebuild a session's grammar state over its generated and repaired tokens."""
    matcher = grammar.matcher
    matcher.reset()
    for tok, origin in zip(tokens, origins, strict=True):
        if origin in (Origin.GENERATED, Origin.REPAIRED):
            matcher.consume_token(tok)
    if matcher.is_error():
        msg = f"the spliced tokens break session {session_id}'s grammar: {matcher.get_error()}"
        raise SpanError(msg)


class SessionEditing(SessionFields):
    """The editing part of a :class:`~coreason_runtime.decode.DecodeSession`."""

    @contextmanager
    def edit(
        self, what: str, *, keep_from: int | None = None, allow_finished: bool = False
    ) -> Iterator[SessionEdit]:
        """Exclusive access to change the session's tokens and KV (injects, repairs, thunks).

        The session must not be running; a last token left out of the KV is computed first.
        If the block raises, tokens, KV, logits and grammar state are put back as they were:
        the KV from ``keep_from`` on is copied to make that possible (default: nothing, for
        edits that only append).

        Raises
        ------
        SessionStateError
            The session is running (pause it first), or finished (unless ``allow_finished``).
        """
        with self._cv:
            if self._executing or (self._state is SessionState.RUNNING and self.engine.owns(self)):
                msg = f"pause session {self.id} before {what}"
                raise SessionStateError(msg)
            if self._state is SessionState.FINISHED and not allow_finished:
                msg = f"session {self.id} is finished; {what} is not possible"
                raise SessionStateError(msg)
            self._executing = True
        try:
            with self.engine.lock:
                self.sync()  # a demoted KV comes back first, and a pending last token
                ed = SessionEdit(self, self._kv_len if keep_from is None else keep_from)
                try:
                    yield ed
                except BaseException:
                    ed.rollback()
                    raise
        finally:
            with self._cv:
                self._executing = False
                self._cv.notify_all()

    def sync(self) -> None:
        """Make ``cache`` hold every token: take a demoted KV back from the block store, and
        forward the last token a finished session left out of the KV (no-op otherwise)."""
        self._kv_ready()
        pending = self._tokens[self._kv_len :]
        if not self._prefilled or not pending:
            return
        with self.engine.lock:
            self.next_logits = self.engine.forward(self, pending, interruptible=False)
            self._kv_len = len(self._tokens)

    def inject(self, ctx_delta: str | Sequence[int]) -> tuple[int, int]:
        """Append text or token ids to the context of a paused (or not yet started) session.

        Only the injected tokens go through the model. Returns their absolute ``[start,
        end)`` span.
        """
        ids = (
            self.engine.encode(ctx_delta)
            if isinstance(ctx_delta, str)
            else [int(t) for t in ctx_delta]
        )
        if not ids:
            msg = "nothing to inject: ctx_delta is empty"
            raise RequestError(msg)
        if self._state is SessionState.RUNNING:
            msg = f"pause session {self.id} before injecting into it"
            raise SessionStateError(msg)
        start = len(self._tokens)
        t0 = time.perf_counter()
        with self.edit("injecting into it") as ed:  # appends: nothing before it changes
            logits = ed.forward(ids) if self._prefilled else None
            ed.commit([*ed.tokens, *ids], [*ed.origins, *[Origin.INJECTED] * len(ids)], logits)
        self.emit(
            EventType.DECODE_INJECTED,
            start=start,
            end=len(self._tokens),
            n_tokens=len(ids),
            prefill_ms=1000 * (time.perf_counter() - t0),
        )
        return start, len(self._tokens)

    def checkpoint(self) -> Checkpoint:
        """Copy tokens, KV, RNG state and grammar state; cheap to restore later."""
        with self.edit("taking a checkpoint", allow_finished=True):
            cp = Checkpoint(
                tokens=tuple(self._tokens),
                origins=tuple(self._origins),
                kv=KVSnapshot.take(self.cache, 0),
                rng=self.generator.get_state(),
                grammar=self.grammar.copy() if self.grammar is not None else None,
                next_logits=None if self.next_logits is None else self.next_logits.clone(),
                n_generated=self.n_generated,
                state=self._state,
                finish_reason=self.finish_reason,
                prefilled=self._prefilled,
            )
        self.emit(EventType.DECODE_CHECKPOINTED, offset=cp.offset)
        return cp

    def restore(self, cp: Checkpoint) -> None:
        """Put the session back exactly as it was at ``cp`` (paused if it was running)."""
        with self.engine.lock, self._cv:
            if self._executing:
                msg = f"pause session {self.id} before restoring a checkpoint"
                raise SessionStateError(msg)
            self._kv_forget()  # the checkpoint's KV replaces a demoted one
            self._tokens = list(cp.tokens)
            self._origins = list(cp.origins)
            crop_to(self.cache, 0)
            cp.kv.restore(self.cache)
            self._kv_len = cp.kv.length if cp.prefilled else 0
            self.generator.set_state(cp.rng)
            self.grammar = cp.grammar.copy() if cp.grammar is not None else None
            self.next_logits = None if cp.next_logits is None else cp.next_logits.clone()
            self.n_generated = cp.n_generated
            self._state = cp.state
            self.finish_reason = cp.finish_reason
            self._prefilled = cp.prefilled
            if self._state is SessionState.RUNNING:
                self._state = SessionState.PAUSED
        self.emit(EventType.DECODE_RESTORED, offset=cp.offset)

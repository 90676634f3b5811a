"""Tiered KV for a session: while parked its KV lives in the block store, not in its cache.

A paused or preempted session hands its KV to the store (:meth:`SessionTiering.demote`):
the blocks are pinned there and, when RAM is over the store's capacity, they are the first
to go to disk; the session's own tensors are freed. :meth:`SessionTiering.prefetch` starts
reading them back (a resume is coming); the next step, edit or checkpoint takes them back
(:meth:`SessionTiering._kv_ready`), waiting only for blocks still on their way, and
recomputes any the store lost (a fault, a full disk) from the session's tokens. Everything
else (the token loop, span repair, thunk splicing, checkpoints) sees an ordinary cache.
"""

from __future__ import annotations

from coreason_runtime._exceptions import SessionStateError
from coreason_runtime.decode._fields import SessionFields, SessionState
from coreason_runtime.decode._kv import release_cache

__all__ = ["SessionTiering"]


class SessionTiering(SessionFields):
    """The KV-tiering part of a :class:`~coreason_runtime.decode.DecodeSession`."""

    @property
    def demoted(self) -> bool:
        """The KV is in the block store, not in ``cache`` (it comes back on the next step)."""
        return self._kv_held is not None

    def demote(self) -> int:
        """Hand this paused session's KV to its block store and free the cache's tensors.

        Returns how many tokens of KV were handed over (0 without a store, when already
        demoted, or with nothing prefilled). The store keeps them in RAM while it has room
        and moves them to disk first when it has not.

        Raises
        ------
        SessionStateError
            The session is not paused.
        """
        return self._demote(strict=True)

    def _demote(self, *, strict: bool) -> int:
        if self.kv is None:
            return 0
        with self._cv:
            if self._state is not SessionState.PAUSED or self._executing:
                if not strict:  # resumed, or being edited, since it parked: nothing to do
                    return 0
                msg = f"session {self.id} is {self._state.value}; only a paused one demotes"
                raise SessionStateError(msg)
            if self._kv_held is not None or not self._prefilled or self._kv_len == 0:
                return 0
            self._executing = True
        try:
            held = self.kv.hold(self._tokens[: self._kv_len], self.cache, self)
            release_cache(self.cache)
            self._kv_held = held
        finally:
            with self._cv:
                self._executing = False
                self._cv.notify_all()
        return held.length

    def prefetch(self) -> int:
        """Start bringing a demoted KV back from disk (a resume is coming); returns the
        reads started. The next step waits only for what has not arrived by then."""
        held = self._kv_held
        if held is None or self.kv is None:
            return 0
        return self.kv.prefetch(held.refs, reason="resume")

    def _kv_ready(self) -> None:
        """Take a demoted KV back into ``cache`` (the caller runs the session exclusively);
        blocks the store no longer has are recomputed from the tokens."""
        held = self._kv_held
        if held is None or self.kv is None:
            return
        self._kv_held = None
        got = self.kv.restore_held(held, self.cache, session=self.id)
        if got < held.length:
            with self.engine.lock:
                self.engine.forward(self, self._tokens[got : held.length], interruptible=False)

    def _kv_forget(self) -> None:
        """Drop a demoted KV without taking it back (a checkpoint replaces it)."""
        held, self._kv_held = self._kv_held, None
        if held is not None:
            held.release()

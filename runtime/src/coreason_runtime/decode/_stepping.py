"""The runtime's one token loop: prefill, mask, sample, charge, forward — one step at a time.

Every local decode goes through :meth:`SessionSteps._step`, under the engine's model lock. A
forward pass checks the session at every decoder-layer boundary (``layer_check``): a pause,
a preemption or a cancel abandons it (the KV is cropped back and the RNG and grammar are
rewound, so the step is redone identically later), a passed deadline raises
:class:`TierTimeoutError`, even inside a long prefill.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coreason_runtime._exceptions import TierTimeoutError
from coreason_runtime.decode._fields import (
    INTERRUPTED,
    PREFILLED,
    TOKEN,
    DeadlinePassed,
    Interrupted,
    Origin,
    SessionFields,
)
from coreason_runtime.decode._kv import crop_to
from coreason_runtime.models._probe import step_entropy

if TYPE_CHECKING:
    import torch

__all__ = ["Planned", "SessionSteps"]


@dataclass(frozen=True)
class Planned:
    """A sampled token waiting for its forward pass (``forward=False``: the session's last
    token, whose pass is deferred). ``rng`` rewinds the sampler if the pass is abandoned;
    ``base`` is the KV length the pass starts from."""

    token: int
    rng: torch.Tensor
    forward: bool
    base: int


class SessionSteps(SessionFields):
    """The decoding part of a :class:`~coreason_runtime.decode.DecodeSession`."""

    def layer_check(self) -> Callable[[], None]:
        """What the engine runs at every layer boundary of this session's forward passes."""
        interrupt = self._interrupt
        deadline = self.deadline

        def check() -> None:
            if interrupt.is_set():
                raise Interrupted
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlinePassed

        return check

    def _timed_out(self, where: str) -> TierTimeoutError:
        msg = f"the decode passed its deadline {where} after {self.n_generated} tokens"
        return TierTimeoutError(msg, workflow_id=self.workflow_id, tier="local")

    def _forward(self, ids: Sequence[int]) -> torch.Tensor | None:
        """Append ``ids`` to the KV; None if a pause or cancel abandoned the pass (cropped)."""
        base = self._kv_len
        high = self.wants_high
        try:
            logits = self.engine.forward(self, ids, interruptible=True, high=high)
        except BaseException as e:
            self.landed(base, e)
            return None
        self.timings.high_steps += high
        return logits

    def forward_planned(self, planned: Planned) -> torch.Tensor | None:
        """The forward pass of a planned token, alone (see :meth:`_forward`)."""
        return self._forward([planned.token])

    @property
    def wants_high(self) -> bool:
        """The next forward pass runs the precision map's full-precision copies."""
        groups = self.engine.token_groups
        return groups is not None and self._prefilled and self.step_entropy >= groups.entropy

    def landed(self, base: int, error: BaseException) -> None:
        """A forward pass from KV length ``base`` ended with ``error``: crop the cache back and
        return None for an interrupt (the step is redone later), or raise what stops decoding.
        """
        crop_to(self.cache, base)
        if isinstance(error, Interrupted):
            return None
        if isinstance(error, DeadlinePassed):
            raise self._timed_out("inside a forward pass") from None
        raise error

    def _done(self) -> str | None:
        """Why the next step finishes without sampling (``"length"``, ``"grammar"``), if it does."""
        if self.n_generated >= self.max_new_tokens:
            return "length"
        if self.grammar is not None and self.grammar.stopped:
            return "grammar"
        return None

    def cover_next(self, *, wait: bool = True) -> bool:
        """Make the meter cover what the next step consumes, *before* the model lock is taken.

        A budget lease may wait for requests in flight to give room back; they need the
        model lock to finish, so the wait happens here, outside it, and :meth:`_step` then
        finds the room granted. A pause or a cancel ends the wait early (False: the step is
        not run); with ``wait=False`` nothing waits (False: the room may come later; a batch
        hands the session to a thread that waits). A passed deadline raises
        :class:`TierTimeoutError`, a refused room ``BudgetExceededError``.
        """
        if self.meter is None:
            return True
        deadline, interrupt = self.deadline, self._interrupt

        def interrupted() -> bool:
            if not wait:
                return True
            return interrupt.is_set() or (deadline is not None and time.monotonic() > deadline)

        if not self._prefilled:
            if self._prompt_charged:
                return True
            covered = self.meter.ensure(tokens_in=self.prompt_len, interrupted=interrupted)
        elif self._done() is not None:
            return True
        else:
            covered = self.meter.ensure(tokens_out=1, interrupted=interrupted)
        if not covered and deadline is not None and time.monotonic() > deadline:
            raise self._timed_out("waiting for budget")
        return covered

    def _step(self) -> str:
        """Prefill the prompt or decode one token. Caller holds the model lock."""
        planned = self.plan_step()
        if not isinstance(planned, Planned):
            return planned
        logits = None
        if planned.forward:
            t0 = time.perf_counter()
            logits = self._forward([planned.token])
            self.timings.forward += time.perf_counter() - t0
        return self.commit_step(planned, logits)

    def plan_step(self) -> str | Planned:
        """Everything of a step before its forward pass: prefill, checks, mask, sample.

        Returns what happened when the step needs no forward pass of a new token (the prompt
        was prefilled, the session finished), else the sampled token to forward and commit
        with :meth:`commit_step` (a batch forwards several sessions' tokens together).
        """
        if not self._prefilled:
            return self._prefill()
        done = self._done()
        if done is not None:
            return self._finish(done)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise self._timed_out("between tokens")
        if self.meter is not None:
            if self.grammar is not None and self.grammar.accepting and self.meter.max_out < 1:
                return self._finish("length")  # a complete value the grant ends: no error
            self.meter.check(tokens_out=1)  # stop *before* a token the budget cannot pay
        assert self.next_logits is not None
        logits = self._masked(self.next_logits)
        t0 = time.perf_counter()
        rng = self.generator.get_state()
        tok = self.sampler.sample(logits, self.generator)
        if self.engine.token_groups is not None:
            self.step_entropy = step_entropy(logits)
        self.timings.sample += time.perf_counter() - t0
        if tok in self.engine.stop_ids:
            if self.meter is not None:
                self.meter.charge(tokens_out=1)  # it was sampled: it is paid for
            return self._finish("eos")
        if self.grammar is not None:
            t0 = time.perf_counter()
            self.grammar.consume(tok)
            self.timings.mask += time.perf_counter() - t0
        last = self.n_generated + 1 >= self.max_new_tokens or (
            self.grammar is not None and self.grammar.stopped
        )
        if not last and self.grammar is not None:  # the next mask runs while the forward does
            self.grammar.prefetch()
        # the final token's forward pass is deferred until something needs it
        return Planned(tok, rng, forward=not last, base=self._kv_len)

    def _prefill(self) -> str:
        if self.meter is not None and not self._prompt_charged:
            self.meter.charge(tokens_in=self.prompt_len)
            self._prompt_charged = True
        t0 = time.perf_counter()
        logits = self._forward(self._tokens[self._kv_len :])
        if logits is None:
            return INTERRUPTED
        self.timings.prefill += time.perf_counter() - t0
        self.next_logits = logits
        self._kv_len = len(self._tokens)
        self._prefilled = True
        return PREFILLED

    def _masked(self, logits: torch.Tensor) -> torch.Tensor:
        early = self.n_generated < self.min_new_tokens
        if self.grammar is None and not early:
            return logits
        t0 = time.perf_counter()
        out = self.grammar.apply(logits) if self.grammar is not None else logits.clone()
        if early:  # too early to stop: mask every stop token
            out[list(self.engine.stop_ids)] = float("-inf")
        elif self.closing is not None and self.grammar is not None:  # never cut off mid-value
            left = self.max_new_tokens - self.n_generated
            if self.meter is not None:
                left = min(left, self.meter.max_out)
            output = self._tokens[self.prompt_len :]
            out = self.closing.narrow(out, self.grammar, left, output, greedy=self.sampler.greedy)
        self.timings.mask += time.perf_counter() - t0
        return out

    def commit_step(self, planned: Planned, logits: torch.Tensor | None) -> str:
        """Commit a planned (non-stop) token with its forward pass's ``logits`` (None for a
        deferred last token, or an abandoned pass: the step is then rewound to be redone
        identically): KV, meter, stop strings."""
        tok = planned.token
        if planned.forward:
            if logits is None:  # abandoned: redo this step identically later
                self.generator.set_state(planned.rng)
                if self.grammar is not None:
                    self.grammar.rollback(1)
                return INTERRUPTED
            self.next_logits = logits
            self._kv_len += 1
        else:
            self.next_logits = None
        self._tokens.append(tok)
        self._origins.append(Origin.GENERATED)
        self.n_generated += 1
        if self.meter is not None:
            self.meter.charge(tokens_out=1)
        if self.stop and self._hit(self.stop):
            return self._finish("stop")
        if not planned.forward:
            done = self.grammar is not None and self.grammar.stopped
            return self._finish("grammar" if done else "length")
        if self.pause_on and self._hit(self.pause_on):  # e.g. a tool call: park for a result
            with self._cv:
                self._pause_requested = True
                self._pause_t0 = time.perf_counter()
        return TOKEN

    def _hit(self, strings: Sequence[str]) -> bool:
        """Did the token just committed complete one of ``strings``?"""
        lo = max(self.prompt_len, len(self._tokens) - 9)
        before = self.engine.text.text(self._tokens[lo:-1])
        after = self.engine.text.text(self._tokens[lo:])
        return any(after.count(s) > before.count(s) for s in strings)

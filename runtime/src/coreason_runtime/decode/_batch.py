"""Continuous batching: one step of several decode sessions, their new tokens in one forward pass.

A batch step is the token loop's own step (:meth:`SessionSteps.plan_step`, a forward pass,
:meth:`SessionSteps.commit_step`), run for every session of the batch with the forward passes
of their sampled tokens merged into one (:meth:`LayerGate.batch_logits`): each session keeps
its own grammar mask, sampler, meter, deadline and controls, and its own KV cache (attention
runs per row over it, so sequences of any lengths batch without padding). Sessions join and
leave between steps; a session whose check stops it at a layer boundary (a pause, an abort, a
deadline) leaves the forward pass there, is settled at once, and the others go on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from coreason_runtime.decode._fields import INTERRUPTED
from coreason_runtime.decode._stepping import Planned

if TYPE_CHECKING:
    import torch

    from coreason_runtime.decode._engine import DecodeEngine
    from coreason_runtime.decode._session import DecodeSession

__all__ = ["pick_batch", "step_batch"]

WAITED = "waited"  # a step that only waited for budget room


class Queued(Protocol):
    """What batch admission reads of a session."""

    @property
    def priority(self) -> int: ...

    @property
    def workflow_id(self) -> str | None: ...


Q = TypeVar("Q", bound=Queued)


def pick_batch(runnable: Sequence[Q], served: Mapping[str | None, int], limit: int) -> list[Q]:
    """The sessions of the next batch step: the most urgent priority only (a more urgent
    session preempts a batch as it preempts one session), at most ``limit``, one workflow at a
    time round-robin, the workflows that ``served`` the fewest tokens lately first, so one
    workflow's burst cannot starve another."""
    if not runnable:
        return []
    top = max(s.priority for s in runnable)
    by_wf: dict[str | None, list[Q]] = {}
    for s in runnable:
        if s.priority == top:
            by_wf.setdefault(s.workflow_id, []).append(s)
    order = sorted(by_wf, key=lambda wf: served.get(wf, 0))
    chosen: list[Q] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(by_wf[wf]) for wf in order):
        for wf in order:
            if depth < len(by_wf[wf]) and len(chosen) < limit:
                chosen.append(by_wf[wf][depth])
        depth += 1
    return chosen


def step_batch(engine: DecodeEngine, sessions: Sequence[DecodeSession]) -> None:
    """One step of every session in ``sessions``; errors finish the session they belong to.

    Prefills run one session at a time; the sessions decoding a token share one forward pass
    (per precision group), or run one by one where the model has no batched step.
    """
    waiting: list[tuple[DecodeSession, Planned]] = []
    done: list[tuple[DecodeSession, str]] = []
    ready = [s for s in sessions if s.enter_step() and _covered(engine, s)]
    with engine.lock:
        for s in ready:
            try:
                planned = s.plan_step()
            except Exception as e:
                s.fail_step(e)
                continue
            if isinstance(planned, Planned) and planned.forward:
                waiting.append((s, planned))
            elif isinstance(planned, Planned):  # a last token: its pass is deferred
                done.append((s, s.commit_step(planned, None)))
            else:
                done.append((s, planned))
        for high in (False, True):
            group = [(s, p) for s, p in waiting if s.wants_high is high]
            if group:
                done.extend(_forward_group(engine, group, high=high))
    for s, result in done:
        s.leave_step(result)


def _covered(engine: DecodeEngine, s: DecodeSession) -> bool:
    """Whether the session's meter covers its next step now. A budget lease that must wait
    for room (other requests settling, some of them in this very batch) waits on a thread of
    its own, the session out of the batch meanwhile, so the engine's thread never blocks."""
    try:
        if s.cover_next(wait=False):
            return True
    except Exception as e:
        s.fail_step(e)
        return False

    def wait_for_room() -> None:
        try:
            covered = s.cover_next()
        except Exception as e:
            s.fail_step(e)
        else:
            s.leave_step(WAITED if covered else INTERRUPTED)
        engine.reschedule()

    threading.Thread(target=wait_for_room, name=f"coreason-room-{s.id}", daemon=True).start()
    return False


def _forward_group(
    engine: DecodeEngine, group: list[tuple[DecodeSession, Planned]], *, high: bool
) -> list[tuple[DecodeSession, str]]:
    """Forward the planned tokens of ``group`` and commit them; the sessions still to leave
    their step (those stopped inside the pass are settled here, at once)."""
    settled: set[int] = set()

    def dropped(row: int, error: Exception) -> None:
        s, planned = group[row]
        settled.add(row)
        try:
            s.landed(planned.base, error)
        except Exception as e:
            s.fail_step(e)
            return
        s.leave_step(s.commit_step(planned, None))

    t0 = time.perf_counter()
    sessions = [s for s, _ in group]
    batched = len(group) > 1 and engine.can_batch(sessions)
    try:
        if not batched:
            logits: list[torch.Tensor | None] = [None] * len(group)
            for i, (s, planned) in enumerate(group):
                logits[i] = _alone(s, planned)
                if logits[i] is None:
                    settled.add(i)
        else:
            engine.largest_batch = max(engine.largest_batch, len(group))
            logits = engine.forward_batch(
                sessions, [p.token for _, p in group], high=high, dropped=dropped
            )
    except Exception as e:  # the whole pass failed: every session still in it fails
        for i, (s, planned) in enumerate(group):
            if i not in settled:
                _fail(s, planned, e)
        return []
    seconds = time.perf_counter() - t0
    out: list[tuple[DecodeSession, str]] = []
    for i, (s, planned) in enumerate(group):
        if i in settled:
            continue
        s.timings.forward += seconds
        s.timings.high_steps += high and batched
        out.append((s, s.commit_step(planned, logits[i])))
    return out


def _alone(s: DecodeSession, planned: Planned) -> torch.Tensor | None:
    """One session's pass on its own; None once it was settled (stopped inside the pass)."""
    try:
        logits = s.forward_planned(planned)
    except Exception as e:
        s.fail_step(e)
        return None
    if logits is None:
        s.leave_step(s.commit_step(planned, None))
    return logits


def _fail(s: DecodeSession, planned: Planned, error: Exception) -> None:
    try:
        s.landed(planned.base, error)
    except Exception as e:
        s.fail_step(e)
        return
    s.leave_step(s.commit_step(planned, None))  # an interrupt: the step is redone later

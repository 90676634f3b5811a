"""Proof-state checkpoints and cousin-branch reuse (PSC-CR) for chains of verified rewrites."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sympy

from coreason_runtime._events import EventType
from coreason_runtime._exceptions import CacheError, CheckpointError
from coreason_runtime.cache._codec import from_tree, to_tree
from coreason_runtime.cache._subgoal import SubgoalCache
from coreason_runtime.cache._verify import numeric_equal

__all__ = ["Checkpoint", "ProofChain", "Step"]

Tactic = Callable[[sympy.Basic], sympy.Basic]


@dataclass(frozen=True)
class Step:
    """One rewrite of the chain: ``tactic(state)`` must equal ``state``; ``alternatives`` are
    tried, in order, after a failure, starting again from the last verified checkpoint."""

    name: str
    tactic: Tactic
    alternatives: tuple[Tactic, ...] = ()

    @property
    def tactics(self) -> tuple[Tactic, ...]:
        return (self.tactic, *self.alternatives)


@dataclass(frozen=True)
class Checkpoint:
    """A verified state of a chain: ``index`` steps done, ``state`` reached by ``step``."""

    index: int
    state: sympy.Basic
    step: str
    branch: str
    grafted_from: str | None = None
    ts: float = field(default_factory=time.time)

    def to_payload(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "state": to_tree(self.state),
            "step": self.step,
            "branch": self.branch,
            "grafted_from": self.grafted_from,
            "ts": self.ts,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Checkpoint:
        return cls(
            index=int(payload["index"]),
            state=from_tree(payload["state"]),
            step=str(payload["step"]),
            branch=str(payload["branch"]),
            grafted_from=payload.get("grafted_from"),
            ts=float(payload["ts"]),
        )


class ProofChain:
    """A chain of equality-preserving rewrites of ``goal``, checkpointed at each verified state.

    Every step's output is checked numerically against its input before it becomes a
    checkpoint (``CHECKPOINT_SAVED``), and is admitted to the subgoal cache as a sub-proof keyed
    on the canonical form of the input and the step's name. When a tactic raises or produces
    something that does not verify, the chain goes back to its last verified checkpoint
    (``CHECKPOINT_RESTORED``) and tries the step's next alternative — it never starts again
    from the goal. Before running a tactic the cache is consulted: a sub-proof made by a
    cousin branch (same root, another branch) for a renamed or reordered variant of the state
    is grafted (``CACHE_GRAFT``) after verification instead of being recomputed.

    Parameters
    ----------
    cache:
        The subgoal cache; its store also persists the checkpoints.
    root:
        The id shared by every branch of one proof.
    branch:
        This branch's name; the chain id is ``root/branch``.
    goal:
        The starting state (ignored when checkpoints for this chain already exist, which is
        how a chain resumes after a crash).
    """

    def __init__(
        self,
        cache: SubgoalCache,
        root: str,
        branch: str = "main",
        goal: str | sympy.Basic | None = None,
        *,
        workflow_id: str | None = None,
        points: int = 6,
    ) -> None:
        self.cache = cache
        self.root = root
        self.branch = branch
        self.chain_id = f"{root}/{branch}"
        self.workflow_id = workflow_id or self.chain_id
        self.points = points
        self.restarts = 0
        self.grafts = 0
        self.tactic_calls = 0
        saved = [Checkpoint.from_payload(p) for _, p in cache.store.checkpoints(self.chain_id)]
        if saved:
            self.checkpoints = saved
            self._emit(EventType.CHECKPOINT_RESTORED, index=saved[-1].index, reason="resume")
        elif goal is None:
            msg = f"chain {self.chain_id!r} has no checkpoints and no goal was given"
            raise CheckpointError(msg, workflow_id=self.workflow_id)
        else:
            start = cache.canonical(goal).original if isinstance(goal, str) else goal
            assert start is not None
            self.checkpoints = []
            self._save(Checkpoint(0, start, "goal", branch))
        self.state = self.checkpoints[-1].state

    @property
    def index(self) -> int:
        """How many steps have been verified."""
        return self.checkpoints[-1].index

    def _emit(self, type_: EventType, **data: Any) -> None:
        if self.cache.bus is not None:
            self.cache.bus.emit(
                type_,
                workflow_id=self.workflow_id,
                source="proof-chain",
                chain=self.chain_id,
                **data,
            )

    def _save(self, checkpoint: Checkpoint) -> None:
        self.cache.store.save_checkpoint(self.chain_id, checkpoint.index, checkpoint.to_payload())
        self.checkpoints.append(checkpoint)
        self._emit(
            EventType.CHECKPOINT_SAVED,
            index=checkpoint.index,
            step=checkpoint.step,
            state=str(checkpoint.state)[:200],
            grafted_from=checkpoint.grafted_from,
        )

    def restore(self, reason: str = "failure") -> sympy.Basic:
        """Go back to the last verified checkpoint; returns its state."""
        last = self.checkpoints[-1]
        self.state = last.state
        self.cache.store.drop_checkpoints(self.chain_id, last.index)
        self._emit(EventType.CHECKPOINT_RESTORED, index=last.index, reason=reason)
        return self.state

    def _verified(self, before: sympy.Basic, after: sympy.Basic) -> bool:
        return numeric_equal(before, after, points=self.points, seed=self.index + 17)

    def apply(self, step: Step) -> sympy.Basic:
        """Advance by one step (graft, or tactics in order); returns the new verified state.

        Raises
        ------
        CheckpointError
            Every tactic failed; the chain is back at its last verified checkpoint.
        """
        op = f"step:{step.name}"
        before = self.state
        try:
            form = self.cache.canonical(before, op)
            hit = self.cache.get(form, workflow_id=self.workflow_id)
        except CacheError:
            form, hit = None, None
        if hit is not None:
            source = hit.entry.provenance.get("branch")
            if source != self.branch:
                self.grafts += 1
                self._emit(
                    EventType.CACHE_GRAFT,
                    step=step.name,
                    key=hit.key,
                    from_branch=source,
                    from_root=hit.entry.provenance.get("project"),
                    same_root=hit.entry.provenance.get("project") == self.root,
                )
            self.state = hit.value
            self._save(
                Checkpoint(self.index + 1, hit.value, step.name, self.branch, grafted_from=source)
            )
            return self.state
        errors: list[str] = []
        for i, tactic in enumerate(step.tactics):
            self.tactic_calls += 1
            try:
                after = tactic(before)
            except Exception as e:  # a tactic is user code: any failure means "try the next"
                errors.append(f"tactic {i}: {type(e).__name__}: {e}")
                self.restarts += 1
                self.restore(reason=f"{step.name}: tactic {i} raised")
                continue
            if not isinstance(after, sympy.Basic) or not self._verified(before, after):
                errors.append(f"tactic {i}: result does not equal the state")
                self.restarts += 1
                self.restore(reason=f"{step.name}: tactic {i} did not verify")
                continue
            self.state = after
            self._save(Checkpoint(self.index + 1, after, step.name, self.branch))
            if form is not None:
                self.cache.put(
                    form,
                    after,
                    workflow_id=self.workflow_id,
                    project=self.root,
                    branch=self.branch,
                    steps=[step.name],
                    verify=False,
                )
            return after
        msg = (
            f"step {step.name!r} of chain {self.chain_id!r} failed with every tactic "
            f"({'; '.join(errors)}); restored checkpoint {self.index}"
        )
        raise CheckpointError(msg, workflow_id=self.workflow_id, attempts=())

    def run(self, steps: Sequence[Step]) -> sympy.Basic:
        """Apply ``steps`` from the first one not yet checkpointed; returns the final state."""
        for step in steps[self.index :]:
            self.apply(step)
        return self.state

"""PSC-CR: checkpoints at verified states, restart from the last one, cousin grafts."""

from __future__ import annotations

from pathlib import Path

import pytest
import sympy
from coreason_runtime import EventBus, EventType
from coreason_runtime._exceptions import CheckpointError
from coreason_runtime.cache import ProofChain, SQLiteStore, Step, SubgoalCache

x = sympy.Symbol("x")


class Counted:
    """A tactic that counts its calls."""

    def __init__(self, fn):  # type: ignore[no-untyped-def]
        self.fn = fn
        self.calls = 0

    def __call__(self, e: sympy.Basic) -> sympy.Basic:
        self.calls += 1
        return self.fn(e)


def _wrong(e: sympy.Basic) -> sympy.Basic:
    return e + 1  # does not preserve equality


def _boom(e: sympy.Basic) -> sympy.Basic:
    raise RuntimeError("tactic crashed")


def test_every_verified_step_is_checkpointed(cache: SubgoalCache, bus: EventBus) -> None:
    chain = ProofChain(cache, "proof", goal="(x+1)**2 - (x-1)**2")
    chain.run([Step("expand", sympy.expand), Step("factor", sympy.factor)])
    assert chain.index == 2 and chain.state == 4 * x
    assert len(bus.history([EventType.CHECKPOINT_SAVED])) == 3


def test_a_failing_step_restarts_from_the_last_checkpoint_not_the_goal(
    cache: SubgoalCache, bus: EventBus
) -> None:
    first = Counted(sympy.expand)
    chain = ProofChain(cache, "proof", goal="(x+1)**2 - (x-1)**2")
    chain.apply(Step("expand", first))
    result = chain.apply(Step("factor", _wrong, alternatives=(_boom, sympy.factor)))
    assert result == 4 * x
    assert first.calls == 1
    assert chain.restarts == 2
    restored = bus.history([EventType.CHECKPOINT_RESTORED])
    assert [e.data.index for e in restored] == [1, 1]


def test_when_every_tactic_fails_the_chain_stays_at_its_last_verified_state(
    cache: SubgoalCache,
) -> None:
    chain = ProofChain(cache, "proof", goal="sin(x)**2 + cos(x)**2")
    with pytest.raises(CheckpointError, match="every tactic"):
        chain.apply(Step("bad", _wrong, alternatives=(_boom,)))
    assert chain.index == 0 and chain.state == sympy.sin(x) ** 2 + sympy.cos(x) ** 2


def test_a_crashed_chain_resumes_from_its_persisted_checkpoints(home: Path, bus: EventBus) -> None:
    expand = Counted(sympy.expand)
    steps = [Step("expand", expand), Step("factor", sympy.factor)]
    cache = SubgoalCache(SQLiteStore(home / "c.sqlite"), bus=bus)
    ProofChain(cache, "proof", goal="(x+2)**2 - 4").apply(steps[0])
    cache.close()
    revived = SubgoalCache(SQLiteStore(home / "c.sqlite"), bus=bus)
    chain = ProofChain(revived, "proof")
    assert chain.index == 1
    assert chain.run(steps) == x * (x + 4)
    assert expand.calls == 1


def test_a_cousin_branch_grafts_a_sub_proof_instead_of_recomputing(
    cache: SubgoalCache, bus: EventBus
) -> None:
    slow = Counted(sympy.factor)
    main = ProofChain(cache, "proof", "main", goal="x**3 - 3*x**2 + 3*x - 1 + y")
    main.apply(Step("factor-part", lambda e: slow(e - sympy.Symbol("y")) + sympy.Symbol("y")))
    cousin = ProofChain(cache, "proof", "alt", goal="t**3 - 3*t**2 + 3*t - 1 + y")
    cousin.apply(Step("factor-part", lambda e: slow(e - sympy.Symbol("y")) + sympy.Symbol("y")))
    assert slow.calls == 1
    assert cousin.grafts == 1
    graft = bus.history([EventType.CACHE_GRAFT])[0]
    assert graft.data.from_branch == "main" and graft.data.same_root is True
    t, y = sympy.symbols("t y")
    assert sympy.expand(cousin.state - ((t - 1) ** 3 + y)) == 0


def test_a_chain_without_goal_or_checkpoints_is_a_typed_error(cache: SubgoalCache) -> None:
    with pytest.raises(CheckpointError):
        ProofChain(cache, "never-started")


def test_a_grafted_step_keeps_the_form_the_tactic_produced(cache: SubgoalCache) -> None:
    steps = [Step("expand", sympy.expand), Step("factor", sympy.factor)]
    ProofChain(cache, "proof", "main", goal="(x+1)**3 - (x-1)**3").run(steps)
    cousin = ProofChain(cache, "proof", "alt", goal="(y+1)**3 - (y-1)**3")
    cousin.run(steps)
    y = sympy.Symbol("y")
    assert cousin.grafts == 2
    assert cousin.state == sympy.factor(6 * y**2 + 2)

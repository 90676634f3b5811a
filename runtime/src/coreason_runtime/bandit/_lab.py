"""Running policies on a bandit, the regret and recovery measures, and the runtime's BanditLab."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from coreason_runtime._events import EventType
from coreason_runtime._exceptions import BanditError
from coreason_runtime.bandit._budget import GrowthBudget
from coreason_runtime.bandit._env import DriftingBandit
from coreason_runtime.bandit._network import GrowingRBFNet
from coreason_runtime.bandit._policies import RBFPolicy

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

    from coreason_runtime._coordinator import Coordinator
    from coreason_runtime._events import EventBus
    from coreason_runtime.bandit._policies import Policy

    FloatArray = NDArray[np.float64]

__all__ = ["BanditLab", "BanditRun", "recovery_rounds", "run_bandit"]


@dataclass(frozen=True)
class BanditRun:
    """What one policy did on one environment, round by round."""

    policy: str
    arms: NDArray[np.int64]
    rewards: FloatArray  # noisy rewards received
    chosen_means: FloatArray  # mean reward of the arm chosen each round
    regret: FloatArray  # dynamic (per-round) regret: best mean minus the chosen arm's mean
    units: NDArray[np.int64]  # live RBF units after each round (zeros for other policies)
    seconds: float  # wall time of select + update over the whole run

    @property
    def cumulative_reward(self) -> float:
        return float(self.rewards.sum())

    @property
    def cumulative_mean_reward(self) -> float:
        """Sum of the chosen arms' *mean* rewards: the reward without the noise's luck."""
        return float(self.chosen_means.sum())

    @property
    def dynamic_regret(self) -> float:
        return float(self.regret.sum())

    @property
    def ms_per_round(self) -> float:
        return 1e3 * self.seconds / max(1, len(self.arms))


def run_bandit(
    env: DriftingBandit,
    policy: Policy,
    *,
    rounds: int | None = None,
    bus: EventBus | None = None,
    emit_every: int = 0,
    on_round: Callable[[int, Policy], None] | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> BanditRun:
    """Drive ``policy`` on ``env`` for ``rounds`` (default: the whole horizon).

    Every ``emit_every`` rounds a BANDIT_ROUND event with the window's mean reward and regret
    goes on ``bus``. ``on_round(t, policy)`` is called after every round (for a controller
    that lowers a growth budget mid-run, say); its time is excluded from ``seconds``, which
    ``timer`` measures (wall clock by default; ``time.process_time`` on a shared machine).
    """
    n = env.horizon if rounds is None else min(rounds, env.horizon)
    if n < 1:
        msg = f"rounds must be positive, got {rounds}"
        raise BanditError(msg)
    arms = np.zeros(n, dtype=np.int64)
    rewards = np.zeros(n)
    units = np.zeros(n, dtype=np.int64)
    net: GrowingRBFNet | None = policy.net if isinstance(policy, RBFPolicy) else None
    contexts, means, noise = env.contexts, env.means, env.noise_draws
    best = env.optimal()
    elapsed = 0.0
    tick = timer
    for t in range(n):
        x = contexts[t]
        t0 = tick()
        a = policy.select(x)
        r = float(means[t, a] + noise[t, a])
        policy.update(x, a, r)
        elapsed += tick() - t0
        arms[t], rewards[t] = a, r
        if net is not None:
            units[t] = net.units
        if on_round is not None:
            on_round(t, policy)
        if bus is not None and emit_every and (t + 1) % emit_every == 0:
            lo = t + 1 - emit_every
            got = means[np.arange(lo, t + 1), arms[lo : t + 1]]
            bus.emit(
                EventType.BANDIT_ROUND,
                source=policy.name,
                t=t + 1,
                mean_reward=float(rewards[lo : t + 1].mean()),
                mean_regret=float((best[lo : t + 1] - got).mean()),
                units=int(units[t]),
            )
    chosen = means[np.arange(n), arms]
    return BanditRun(
        policy=policy.name,
        arms=arms,
        rewards=rewards,
        chosen_means=chosen,
        regret=best[:n] - chosen,
        units=units,
        seconds=elapsed,
    )


def recovery_rounds(
    regret: FloatArray,
    change_points: list[int],
    *,
    window: int = 250,
    before: int = 1000,
    tol: float = 0.1,
    slack: float = 0.01,
) -> list[int]:
    """Rounds after each abrupt change until regret is back at its pre-change level.

    The pre-change level is the mean regret over the ``before`` rounds before the change;
    recovery is the first ``k`` at which the mean regret over ``[c+k, c+k+window)`` is at most
    ``level·(1+tol) + slack``. A policy that never gets back before the next change (or the
    end) scores the whole interval.
    """
    n = len(regret)
    cs = np.concatenate([[0.0], np.cumsum(regret)])
    bounds = [*change_points, n]
    out: list[int] = []
    for i, c in enumerate(change_points):
        end = bounds[i + 1]
        level = (cs[c] - cs[max(0, c - before)]) / max(1, min(before, c))
        starts = np.arange(c, max(c + 1, end - window + 1))
        means = (cs[np.minimum(starts + window, n)] - cs[starts]) / window
        ok = np.nonzero(means <= level * (1.0 + tol) + slack)[0]
        out.append(int(ok[0]) if ok.size else end - c)
    return out


class BanditLab:
    """The runtime's bandit engine: it owns the growth budgets that gate every network.

    The Coordinator attaches one (``rt.engine("bandit", BanditLab.for_runtime)``); notebooks
    ask it for named budgets, networks bound to them, environments and runs, and lower a
    budget by name while a network is learning.
    """

    def __init__(self, bus: EventBus | None = None) -> None:
        self.bus = bus
        self.budgets: dict[str, GrowthBudget] = {}

    @classmethod
    def for_runtime(cls, rt: Coordinator) -> BanditLab:
        return cls(bus=rt.bus)

    def budget(self, name: str, limit: int | None = None, *, recycle: bool = False) -> GrowthBudget:
        """A new growth budget registered under ``name`` (replacing any older one)."""
        budget = GrowthBudget(limit, bus=self.bus, name=name, recycle=recycle)
        self.budgets[name] = budget
        return budget

    def lower(self, name: str, by: int) -> float:
        """Take ``by`` units from the named budget (an uncapped one stays uncapped); returns
        what remains.

        Raises
        ------
        BanditError
            No budget has that name (``InvalidBudgetError`` for a negative ``by``).
        """
        return self._get(name).lower(by)

    def lower_to(self, name: str, remaining: int) -> float:
        """Cap what the named budget has left at ``remaining`` (0 stops growth, even uncapped)."""
        return self._get(name).lower_to(remaining)

    def _get(self, name: str) -> GrowthBudget:
        try:
            return self.budgets[name]
        except KeyError as e:
            msg = f"no growth budget named {name!r}; known: {sorted(self.budgets)}"
            raise BanditError(msg) from e

    def network(self, d: int, k: int, budget: str | int | None = None, **kw: Any) -> GrowingRBFNet:
        """A GrowingRBFNet gated by the named budget (created uncapped if new) or a fresh cap.

        ``name`` (in ``kw``) names the network's events; it defaults to the budget's name, and
        names the fresh budget when ``budget`` is an int or ``None``.
        """
        name = kw.pop("name", None)
        if isinstance(budget, str):
            gate = self.budgets.get(budget) or self.budget(budget)
        else:
            gate = self.budget(name or "grbf", budget)
        return GrowingRBFNet(d, k, gate, bus=self.bus, name=name or gate.name, **kw)

    def run(self, env: DriftingBandit, policy: Policy, **kw: Any) -> BanditRun:
        """:func:`run_bandit` publishing on the runtime's bus."""
        kw.setdefault("bus", self.bus)
        kw.setdefault("emit_every", 100)
        return run_bandit(env, policy, **kw)

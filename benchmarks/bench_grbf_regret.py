"""Claim: the growing RBF network beats the best linear bandit on a drifting non-linear bandit.

Every policy plays the same seeded environments (T = 20,000, d = 5, K = 5, abrupt changes
every 4,000 rounds plus slow drift): GRBF-UCB (uncapped and with a growth budget of 32),
LinUCB, sliding-window LinUCB, discounted LinUCB, ε-greedy ridge, and mabwiser's LinUCB as the
peer library. Reported: dynamic regret (Σ best mean − chosen mean) and the rounds needed to get
back to the pre-change regret level after each abrupt change.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coreason_runtime.bandit import (  # noqa: E402
    DiscountedLinUCB,
    DriftingBandit,
    EpsilonGreedyLinear,
    GrowingRBFNet,
    LinUCB,
    RBFPolicy,
    SlidingWindowLinUCB,
    recovery_rounds,
    run_bandit,
)

from benchmarks._report import write_section  # noqa: E402

T = int(os.environ.get("GRBF_T", 20_000))
SEEDS = list(range(100, 100 + int(os.environ.get("GRBF_SEEDS", 20))))
MAB_BATCH = 20

POLICIES: dict[str, Callable[[int], Any]] = {
    "GRBF-UCB (uncapped)": lambda s: RBFPolicy(GrowingRBFNet(5, 5, None), seed=s),
    "GRBF-UCB (budget 32)": lambda s: RBFPolicy(GrowingRBFNet(5, 5, 32), seed=s),
    "LinUCB": lambda s: LinUCB(5, 5, alpha=0.5),
    "SW-LinUCB (window 2000)": lambda s: SlidingWindowLinUCB(5, 5, alpha=0.5, window=2000),
    "D-LinUCB (γ = 0.998)": lambda s: DiscountedLinUCB(5, 5, alpha=0.5, gamma=0.998),
    "ε-greedy ridge (ε = 0.05)": lambda s: EpsilonGreedyLinear(5, 5, epsilon=0.05, seed=s),
}
PEER = f"mabwiser LinUCB (α = 0.5, batches of {MAB_BATCH})"
LINEAR = [k for k in POLICIES if not k.startswith("GRBF")] + [PEER]


def play_mabwiser(env: DriftingBandit, seed: int) -> np.ndarray:
    """mabwiser driven through its batch API: predict a batch, then partial_fit it."""
    from mabwiser.mab import MAB, LearningPolicy

    mab = MAB(arms=list(range(env.k)), learning_policy=LearningPolicy.LinUCB(alpha=0.5), seed=seed)
    rng = np.random.default_rng(seed)
    arms = np.empty(env.horizon, dtype=np.int64)
    for lo in range(0, env.horizon, MAB_BATCH):
        hi = min(env.horizon, lo + MAB_BATCH)
        xs = np.c_[env.contexts[lo:hi], np.ones(hi - lo)]  # an intercept, as our LinUCB has
        if lo == 0:
            chosen = rng.integers(env.k, size=hi - lo)
        else:
            chosen = np.asarray(mab.predict(xs)).reshape(-1)
        arms[lo:hi] = chosen
        rewards = env.means[np.arange(lo, hi), chosen] + env.noise_draws[np.arange(lo, hi), chosen]
        if lo == 0:
            mab.fit(list(chosen), list(rewards), xs)
        else:
            mab.partial_fit(list(chosen), list(rewards), xs)
    return env.means.max(axis=1) - env.means[np.arange(env.horizon), arms]


def play(job: tuple[int, str]) -> tuple[int, str, float, list[int]]:
    seed, name = job
    env = DriftingBandit(d=5, k=5, horizon=T, seed=seed)
    if name == PEER:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            regret = play_mabwiser(env, seed)
    else:
        regret = run_bandit(env, POLICIES[name](seed)).regret
    return seed, name, float(regret.sum()), recovery_rounds(regret, env.change_points)


def _command() -> str:
    env = " ".join(f"{k}={os.environ[k]}" for k in ("GRBF_T", "GRBF_SEEDS") if k in os.environ)
    return f"{env + ' ' if env else ''}.venv/bin/python benchmarks/bench_grbf_regret.py"


def main() -> None:
    names = [*POLICIES, PEER]
    jobs = [(s, n) for s in SEEDS for n in names]
    with Pool(2) as pool:
        out = pool.map(play, jobs, chunksize=1)
    regret = {
        n: np.array([r for s in SEEDS for (ss, nn, r, _) in out if ss == s and nn == n])
        for n in names
    }
    recov = {n: np.array([x for (_, nn, _, rec) in out if nn == n for x in rec]) for n in names}
    best_linear = min(LINEAR, key=lambda n: regret[n].mean())
    base = regret[best_linear].mean()
    lin_rec = float(np.median(recov["LinUCB"]))
    rows = []
    for n in names:
        rows.append(
            [
                n,
                f"{regret[n].mean():.1f} ± {regret[n].std(ddof=1) / np.sqrt(len(SEEDS)):.1f}",
                f"{regret[n].mean() / base:.3f}",
                f"{np.median(recov[n]):.0f}",
                f"{np.mean(recov[n]):.0f}",
                f"{np.median(recov[n]) / lin_rec:.2f}",
            ]
        )
    g = regret["GRBF-UCB (uncapped)"].mean()
    g32 = regret["GRBF-UCB (budget 32)"].mean()
    write_section(
        "bench_grbf_regret",
        "On a drifting non-linear contextual bandit, GRBF-UCB has ≥ 20% lower dynamic regret "
        "than the best linear baseline, and recovers from an abrupt change in ≤ half "
        "LinUCB's rounds.",
        [
            "policy",
            "dynamic regret (mean ± s.e.)",
            "regret / best linear",
            "recovery rounds (median)",
            "recovery (mean)",
            "recovery / LinUCB",
        ],
        rows,
        command=_command(),
        notes=(
            f"Best linear baseline: **{best_linear}**. GRBF uncapped: "
            f"{100 * (1 - g / base):.1f}% lower dynamic regret; budget 32: "
            f"{100 * (1 - g32 / base):.1f}% lower. "
            f"Scale: T = {T}, {len(SEEDS)} seeds ({SEEDS[0]}–{SEEDS[-1]}; the GRBF and baseline "
            "hyper-parameters were chosen on seeds 0–3 with T = 8,000), 2 worker processes. "
            "Recovery: for each abrupt change (4 per run), the first round after it at which "
            "the mean regret over the next 250 rounds is ≤ 1.1 × the mean regret of the 1,000 "
            "rounds before the change + 0.01; a policy that never gets back scores the whole "
            "4,000-round interval. mabwiser (v2.7) is driven through its batch API (predict 20 "
            "contexts, then `partial_fit` them) because one `predict` call costs ~1 ms; it "
            "has no forgetting, so it is the stationary peer of our LinUCB (its contexts get "
            "a constant column so it has an intercept as ours does)."
        ),
    )


if __name__ == "__main__":
    main()

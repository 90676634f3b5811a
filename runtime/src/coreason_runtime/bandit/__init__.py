"""Growing RBF networks under a runtime-owned growth budget, on a drifting contextual bandit."""

from __future__ import annotations

from coreason_runtime._exceptions import (
    BanditError,
    ContextDimensionError,
    InvalidArmError,
    InvalidBudgetError,
    InvalidRewardError,
)
from coreason_runtime.bandit._budget import GrowthBudget
from coreason_runtime.bandit._env import DriftingBandit
from coreason_runtime.bandit._lab import BanditLab, BanditRun, recovery_rounds, run_bandit
from coreason_runtime.bandit._network import GrowingRBFNet
from coreason_runtime.bandit._policies import (
    DiscountedLinUCB,
    EpsilonGreedyLinear,
    LinUCB,
    MabwiserPolicy,
    Policy,
    RBFPolicy,
    SlidingWindowLinUCB,
)

__all__ = [
    "BanditError",
    "BanditLab",
    "BanditRun",
    "ContextDimensionError",
    "DiscountedLinUCB",
    "DriftingBandit",
    "EpsilonGreedyLinear",
    "GrowingRBFNet",
    "GrowthBudget",
    "InvalidArmError",
    "InvalidBudgetError",
    "InvalidRewardError",
    "LinUCB",
    "MabwiserPolicy",
    "Policy",
    "RBFPolicy",
    "SlidingWindowLinUCB",
    "recovery_rounds",
    "run_bandit",
]

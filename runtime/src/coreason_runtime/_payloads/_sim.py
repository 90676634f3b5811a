"""Payloads of multi-fidelity simulations and the growing RBF network and bandits."""

from __future__ import annotations

from coreason_runtime._payloads._base import EventPayload

__all__ = [
    "BanditRound",
    "CellCoarsened",
    "CellRefined",
    "InvariantViolated",
    "RbfGated",
    "RbfGrown",
    "RbfPruned",
    "SimStep",
]


# --- simulation ----------------------------------------------------------------------------


class SimStep(EventPayload):
    """``sim.step``: one watchdog window ended at time ``t`` after ``steps`` steps.

    ``refined`` is the 0/1 map of refined blocks, ``residual`` the watchdog's residual per
    block (None before the first window).
    """

    t: float
    steps: int
    n_refined: int
    cell_updates: int
    mass_drift: float
    max_residual: float
    refined: list[list[int]]
    residual: list[list[float]] | None


class CellRefined(EventPayload):
    """``sim.refined``: coarse block ``block`` (covering ``region`` = x0, x1, y0, y1) was
    refined ``factor`` times; ``residual`` is the block's residual that asked for it."""

    block: list[int]
    region: list[float]
    factor: int
    t: float
    step: int
    reason: str
    residual: float | None


class CellCoarsened(EventPayload):
    """``sim.coarsened``: a refined block went back to the coarse grid."""

    block: list[int]
    region: list[float]
    t: float
    step: int
    residual: float


class InvariantViolated(EventPayload):
    """``sim.invariant_violated``: ``invariant`` took ``value`` at time ``t`` (in ``block`` /
    ``region`` when local); ``action`` is what the simulation did about it, if anything."""

    invariant: str
    value: float
    t: float
    block: list[int] | None
    region: list[float] | None
    action: str | None


# --- the growing RBF network and bandits ---------------------------------------------------


class RbfGrown(EventPayload):
    """``rbf.grown``: unit ``unit`` was added at round ``t`` for ``arm`` (``units`` now);
    ``remaining`` is the growth budget left (``inf`` when uncapped)."""

    t: int
    unit: int
    units: int
    arm: int
    error: float
    width: float
    remaining: float


class RbfPruned(EventPayload):
    """``rbf.pruned``: ``removed`` units with no recent data went at round ``t``."""

    t: int
    removed: int
    units: int
    remaining: float


class RbfGated(EventPayload):
    """``rbf.gated``: the growth budget refused a unit (at round ``t``) or was lowered
    (``t`` None); ``reason`` says which."""

    t: int | None
    remaining: float
    granted: int
    refused: int
    reason: str


class BanditRound(EventPayload):
    """``bandit.round``: a policy's running means at round ``t``."""

    t: int
    mean_reward: float
    mean_regret: float
    units: int

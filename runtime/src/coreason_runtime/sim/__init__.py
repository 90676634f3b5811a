"""Invariant-gated multi-fidelity simulation: solvers, invariants, watchdog, what-if gate."""

from __future__ import annotations

from coreason_runtime.sim._backend import Backend, get_backend
from coreason_runtime.sim._cases import Case, dam_break, gaussian_pulse, radial_bump
from coreason_runtime.sim._grid import BlockGrid
from coreason_runtime.sim._invariants import (
    Invariant,
    InvariantChecker,
    Violation,
    invariants_from_law,
)
from coreason_runtime.sim._pde import ConservationLaw, check_dimensions
from coreason_runtime.sim._physics import Diffusion, Physics, ShallowWater
from coreason_runtime.sim._simulation import MultiFidelitySimulation, SimResult
from coreason_runtime.sim._watchdog import Assessment, Watchdog
from coreason_runtime.sim._whatif import Decision, Prediction, WhatIfGate

__all__ = [
    "Assessment",
    "Backend",
    "BlockGrid",
    "Case",
    "ConservationLaw",
    "Decision",
    "Diffusion",
    "Invariant",
    "InvariantChecker",
    "MultiFidelitySimulation",
    "Physics",
    "Prediction",
    "ShallowWater",
    "SimResult",
    "Violation",
    "Watchdog",
    "WhatIfGate",
    "check_dimensions",
    "dam_break",
    "gaussian_pulse",
    "get_backend",
    "invariants_from_law",
    "radial_bump",
]

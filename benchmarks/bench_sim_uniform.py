"""IGMS: residual-gated refinement against a uniformly fine grid (error, time, mass drift)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coreason_runtime.sim import (  # noqa: E402
    Diffusion,
    MultiFidelitySimulation,
    ShallowWater,
    Watchdog,
    dam_break,
    gaussian_pulse,
    radial_bump,
)

from benchmarks._report import write_section  # noqa: E402

REPEATS = 3


def best_run(
    make: Callable[[], MultiFidelitySimulation], t_end: float, repeats: int = REPEATS
) -> tuple[MultiFidelitySimulation, Any, float]:
    """The fastest of ``repeats`` identical runs (the machine is shared and noisy)."""
    best: tuple[MultiFidelitySimulation, Any, float] | None = None
    for _ in range(repeats):
        sim = make()
        res = sim.run(t_end)
        if best is None or res.wall_s < best[2]:
            best = (sim, res, res.wall_s)
    assert best is not None
    return best


def reference_exact(sim: MultiFidelitySimulation) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Cell averages of a finer uniform run on any grid whose edges align with it."""
    u, n, length = sim.grid.coarse_numpy(), sim.grid.n, sim.grid.length

    def avg(xe: np.ndarray, ye: np.ndarray) -> np.ndarray:
        i0, i1 = (round(xe[0] / length * n), round(xe[-1] / length * n))
        j0, j1 = (round(ye[0] / length * n), round(ye[-1] / length * n))
        kx, ky = (i1 - i0) // (len(xe) - 1), (j1 - j0) // (len(ye) - 1)
        sub = u[:, i0:i1, j0:j1]
        return sub.reshape(u.shape[0], len(xe) - 1, kx, len(ye) - 1, ky).mean((2, 4))

    return avg


def compare(
    name: str,
    physics: Any,
    case: Any,
    *,
    n: int,
    block: int,
    factor: int,
    tol: float,
    t_end: float,
    window: int = 8,
    buffer: int = 0,
    exact: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    repeats: int = REPEATS,
) -> list[object]:
    exact = exact or case.exact(t_end)
    fine, fres, ftime = best_run(
        lambda: MultiFidelitySimulation(physics, case, n=n * factor, block=block * factor),
        t_end,
        repeats,
    )
    amr, ares, atime = best_run(
        lambda: MultiFidelitySimulation(
            physics,
            case,
            n=n,
            block=block,
            factor=factor,
            window=window,
            watchdog=Watchdog(tol=tol, buffer=buffer),
        ),
        t_end,
        repeats,
    )
    coarse = MultiFidelitySimulation(physics, case, n=n, block=block)
    coarse.run(t_end)
    ef, ea, ec = (s.grid.error_l2(exact) for s in (fine, amr, coarse))
    print(
        f"{name}: fine {ef:.3g} ({ftime:.2f}s) amr {ea:.3g} ({atime:.2f}s) coarse {ec:.3g}",
        flush=True,
    )
    return [
        name,
        f"{n}² → {n * factor}² (blocks {block}², ×{factor})",
        ef,
        ea,
        ea / ef,
        ec / ef,
        ftime,
        atime,
        atime / ftime,
        ares.cell_updates / fres.cell_updates,
        f"{abs(ares.mass_drift):.1e}",
        ares.refinements,
        ares.coarsenings,
    ]


def main() -> None:
    rows = []
    pulses = gaussian_pulse(
        kappa=1.0, sigma=0.015, centre=(0.3, 0.32), others=[((0.68, 0.62), 0.09, 3.0)]
    )
    rows.append(
        compare(
            "heat: narrow + wide Gaussian pulse (exact)",
            Diffusion(1.0),
            pulses,
            n=128,
            block=8,
            factor=4,
            tol=1e-2,
            t_end=2e-4,
        )
    )
    single = gaussian_pulse(kappa=1.0, sigma=0.02, centre=(0.37, 0.41))
    rows.append(
        compare(
            "heat: single Gaussian pulse (exact)",
            Diffusion(1.0),
            single,
            n=128,
            block=8,
            factor=4,
            tol=1e-2,
            t_end=2e-4,
        )
    )
    dam = dam_break(hl=2.0, hr=1.0, x0=0.5)
    rows.append(
        compare(
            "shallow water: dam break (Stoker exact)",
            ShallowWater(),
            dam,
            n=64,
            block=4,
            factor=4,
            tol=0.05,
            t_end=0.8 * dam.t_valid,
            window=4,
            buffer=1,
            repeats=1,
        )
    )
    bump = radial_bump(amplitude=0.5, sigma=0.04)
    t_bump = 0.06
    ref = MultiFidelitySimulation(ShallowWater(), bump, n=256, block=32)
    ref.run(t_bump)
    rows.append(
        compare(
            "shallow water: radial bump (256² reference run)",
            ShallowWater(),
            bump,
            n=32,
            block=4,
            factor=4,
            tol=0.02,
            t_end=t_bump,
            window=4,
            buffer=1,
            exact=reference_exact(ref),
            repeats=1,
        )
    )
    header = [
        "case",
        "grid",
        "L2 uniform fine",
        "L2 refined",
        "error ratio",
        "coarse-only error ratio",
        "uniform fine s",
        "refined s",
        "time ratio",
        "cell-update ratio",
        "mass drift",
        "refinements",
        "coarsenings",
    ]
    notes = (
        "Goal: error ratio ≤ 1.5 with time ratio ≤ 0.20 (the seed claimed ≤ 0.40), relative "
        "mass drift < 1e-12. Both runs in the same process, NumPy backend, float64, best of "
        f"{REPEATS} runs for the heat rows (1 run for shallow water), on a shared 2-core "
        "machine. The refined run is coarse by default; the watchdog refines a block when "
        "the local residual of the discrete conservation law (κ(Δ₄−Δ₂)u for heat; the "
        "Rusanov dissipation in the depth equation for shallow water) times the time left "
        "exceeds `tol`, and refined blocks subcycle with refluxing at coarse–fine faces. "
        "L2 errors are on each run's own cells against exact cell averages (or, for the "
        "bump, a uniform 256² run). Shallow-water rows are small (the dam break is a 1D "
        "front spanning the whole y range, so most blocks along it refine) and are reported "
        "as measured, including where refinement does not pay."
    )
    write_section(
        "bench_sim_uniform",
        "IGMS: residual-gated refinement reaches uniform-fine "
        "accuracy for a fraction of the time, conserving mass to round-off",
        header,
        rows,
        notes=notes,
    )


if __name__ == "__main__":
    main()

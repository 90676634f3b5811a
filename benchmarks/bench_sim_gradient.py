"""IGMS: residual-gated refinement against a gradient-flagged AMR baseline at equal error."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coreason_runtime.sim import (  # noqa: E402
    Diffusion,
    MultiFidelitySimulation,
    ShallowWater,
    Watchdog,
    dam_break,
    gaussian_pulse,
)

from benchmarks._report import write_section  # noqa: E402

RESIDUAL_TOLS = [1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001]
GRADIENT_TOLS = [0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01, 0.005]
ERROR_SLACK = 1.5  # "equal error": within 1.5x of the uniformly fine run


def run(physics: Any, case: Any, t_end: float, exact: Any, **kw: Any) -> dict[str, Any]:
    sim = MultiFidelitySimulation(physics, case, **kw)
    res = sim.run(t_end)
    peak = max((h["n_refined"] for h in res.history), default=0)
    return {
        "error": sim.grid.error_l2(exact),
        "cells": res.cell_updates,
        "wall": res.wall_s,
        "refinements": res.refinements,
        "peak": peak,
        "nb2": sim.grid.nb**2,
    }


def cheapest(
    physics: Any,
    case: Any,
    t_end: float,
    exact: Any,
    target: float,
    kind: str,
    tols: list[float],
    buf: int,
    **kw: Any,
) -> tuple[float | None, dict[str, Any] | None]:
    """The threshold whose run meets ``target`` error most cheaply (by cell-updates)."""
    best: tuple[float | None, dict[str, Any] | None] = (None, None)
    for tol in tols:
        r = run(
            physics,
            case,
            t_end,
            exact,
            watchdog=Watchdog(tol=tol, indicator=kind, buffer=buf),
            **kw,
        )
        print(
            f"  {kind} tol={tol:g}: error {r['error']:.3g} (target {target:.3g}) "
            f"cells {r['cells']:.3g}",
            flush=True,
        )
        if r["error"] <= target and (best[1] is None or r["cells"] < best[1]["cells"]):
            best = (tol, r)
    return best


def case_rows(
    name: str,
    physics: Any,
    case: Any,
    t_end: float,
    *,
    n: int,
    block: int,
    factor: int,
    window: int,
    buf: int,
) -> list[list[object]]:
    exact = case.exact(t_end)
    fine = MultiFidelitySimulation(physics, case, n=n * factor, block=block * factor)
    fres = fine.run(t_end)
    target = ERROR_SLACK * fine.grid.error_l2(exact)
    print(f"{name}: uniform fine error {target / ERROR_SLACK:.3g}", flush=True)
    rows = []
    for kind, tols in (
        ("residual (invariant-gated)", RESIDUAL_TOLS),
        ("gradient (baseline)", GRADIENT_TOLS),
    ):
        tol, r = cheapest(
            physics,
            case,
            t_end,
            exact,
            target,
            kind.split()[0],
            tols,
            n=n,
            block=block,
            factor=factor,
            window=window,
            buf=buf,
        )
        if r is None:
            rows.append([name, kind, "none reached the target", "", "", "", "", "", ""])
            continue
        # time the chosen configuration again, best of 3 (the machine is shared)
        walls = [
            run(
                physics,
                case,
                t_end,
                exact,
                n=n,
                block=block,
                factor=factor,
                window=window,
                watchdog=Watchdog(tol=tol, indicator=kind.split()[0], buffer=buf),
            )["wall"]
            for _ in range(3)
        ]
        rows.append(
            [
                name,
                kind,
                tol,
                r["error"] / (target / ERROR_SLACK),
                r["refinements"],
                f"{r['peak']}/{r['nb2']}",
                r["cells"] / fres.cell_updates,
                min(walls),
                min(walls) / fres.wall_s,
            ]
        )
    return rows


def main() -> None:
    rows: list[list[object]] = []
    pulses = gaussian_pulse(
        kappa=1.0, sigma=0.015, centre=(0.3, 0.32), others=[((0.68, 0.62), 0.09, 3.0)]
    )
    rows += case_rows(
        "heat: narrow + wide pulse",
        Diffusion(1.0),
        pulses,
        2e-4,
        n=128,
        block=8,
        factor=4,
        window=8,
        buf=0,
    )
    single = gaussian_pulse(kappa=1.0, sigma=0.02, centre=(0.37, 0.41))
    rows += case_rows(
        "heat: single pulse",
        Diffusion(1.0),
        single,
        2e-4,
        n=128,
        block=8,
        factor=4,
        window=8,
        buf=0,
    )
    dam = dam_break(hl=2.0, hr=1.0, x0=0.5)
    rows += case_rows(
        "shallow water: dam break",
        ShallowWater(),
        dam,
        0.8 * dam.t_valid,
        n=32,
        block=4,
        factor=4,
        window=4,
        buf=1,
    )
    header = [
        "case",
        "indicator",
        "threshold chosen",
        "error / uniform-fine error",
        "blocks refined (events)",
        "peak refined blocks",
        "cell-updates / uniform fine",
        "time s (best of 3)",
        "time / uniform fine",
    ]
    notes = (
        f"For each indicator the thresholds {RESIDUAL_TOLS} (residual, absolute, in units of "
        f"u) and {GRADIENT_TOLS} (gradient, relative to the largest jump) are scanned; the "
        f"row shows the cheapest run (by cell-updates) whose L2 error is within "
        f"{ERROR_SLACK}x of the uniformly fine run — 'equal error'. Same solver, same "
        "subcycling and refluxing; only the flagging differs. The narrow + wide case is "
        "where the indicators differ: the wide pulse has large gradients but is resolved "
        "on the coarse grid, so the gradient flag spends fine cells there. On a single "
        "pulse the two indicators flag much the same blocks. On the small dam break "
        "(32² coarse, a 1D front across the whole y range) most blocks end up refined "
        "with either flag and neither beats the uniformly fine run on wall time: per-block "
        "overhead dominates at this size. Timings on a shared 2-core machine."
    )
    write_section(
        "bench_sim_gradient",
        "IGMS vs gradient-flagged AMR: refinement count and time at equal error",
        header,
        rows,
        notes=notes,
    )


if __name__ == "__main__":
    main()

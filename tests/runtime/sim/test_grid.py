"""The block grid: refluxing conservation, conservative regridding, convergence, memory."""

from __future__ import annotations

import numpy as np
import pytest
from coreason_runtime._exceptions import ConfigurationError, GridTooLargeError, SimulationError
from coreason_runtime.sim import BlockGrid, Diffusion, ShallowWater, dam_break, gaussian_pulse


def random_grid(physics, n: int = 16, seed: int = 0, **kw) -> BlockGrid:
    rng = np.random.default_rng(seed)
    u0 = 1.0 + rng.random((physics.ncomp, n, n))
    if physics.ncomp == 3:
        u0[1:] -= 1.5
    return BlockGrid(physics, u0, block=4, **kw)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_refluxing_conserves_diffusion_mass_to_round_off(factor: int) -> None:
    grid = random_grid(Diffusion(1.0), factor=factor)
    grid.refine([(1, 1), (1, 2), (2, 2), (0, 3)])
    m0 = grid.totals()[0]
    for _ in range(20):
        grid.step(grid.max_dt())
    assert abs(grid.totals()[0] - m0) / m0 < 1e-13


def test_refluxing_conserves_shallow_water_mass_to_round_off() -> None:
    grid = random_grid(ShallowWater())
    grid.refine([(1, 1), (2, 1)])
    m0 = grid.totals()[0]
    for _ in range(20):
        grid.step(grid.max_dt())
    assert abs(grid.totals()[0] - m0) / m0 < 1e-13
    assert grid.coarse_numpy()[0].min() > 0


@pytest.mark.parametrize("block", [(-1, 0), (0, 4)])
def test_refining_a_block_off_the_grid_is_refused_and_changes_nothing(
    block: tuple[int, int],
) -> None:
    grid = random_grid(Diffusion(1.0))
    before = grid.coarse_numpy().copy()
    with pytest.raises(SimulationError, match="outside"):
        grid.refine([(1, 1), block])
    with pytest.raises(SimulationError, match="outside"):
        grid.coarsen([block])
    assert grid.n_refined == 0 and not grid.refined.any()
    np.testing.assert_array_equal(grid.coarse_numpy(), before)


def test_refine_and_coarsen_keep_every_block_average() -> None:
    grid = random_grid(ShallowWater())
    before = grid.coarse_numpy().copy()
    grid.refine([(0, 0), (3, 2)])
    np.testing.assert_allclose(grid.coarse_numpy(), before, rtol=1e-14)
    grid.coarsen([(0, 0)])
    np.testing.assert_allclose(grid.coarse_numpy(), before, rtol=1e-14)
    assert grid.blocks == [(3, 2)]


def test_refining_without_a_gradient_leaves_constant_data_constant() -> None:
    grid = BlockGrid(Diffusion(1.0), np.full((1, 8, 8), 3.0), block=4)
    grid.refine([(0, 1)])
    grid.step(grid.max_dt())
    np.testing.assert_allclose(grid.fine_numpy(), 3.0, rtol=1e-14)
    np.testing.assert_allclose(grid.coarse_numpy(), 3.0, rtol=1e-14)


def test_uniform_diffusion_converges_at_second_order() -> None:
    case = gaussian_pulse(kappa=1.0, sigma=0.05)
    errors = []
    for n in (32, 64):
        e = np.linspace(0, 1, n + 1)
        grid = BlockGrid(Diffusion(1.0), case.initial(e, e), block=8)
        t, t_end = 0.0, 1e-3
        while t < t_end:
            dt = min(grid.max_dt(), t_end - t)
            grid.step(dt)
            t += dt
        errors.append(grid.error_l2(case.exact(t_end)))
    assert errors[0] / errors[1] > 3.5


def test_dam_break_exact_solution_starts_as_the_dam() -> None:
    case = dam_break(hl=2.0, hr=1.0)
    e = np.linspace(0, 1, 9)
    np.testing.assert_allclose(case.initial(e, e)[0, :, 0], [2, 2, 2, 2, 1, 1, 1, 1])


def test_grid_over_the_memory_limit_is_refused_before_allocation() -> None:
    with pytest.raises(GridTooLargeError, match="MiB"):
        BlockGrid(Diffusion(1.0), np.zeros((1, 64, 64)), block=8, memory_limit=1000)


def test_refinement_is_capped_by_the_memory_limit() -> None:
    limit = 8 * 64 * 64 * 14 + 8 * 32 * 32 * 14 * 2  # coarse grid + two fine blocks
    grid = BlockGrid(Diffusion(1.0), np.zeros((1, 64, 64)), block=8, memory_limit=limit)
    assert grid.max_fine_blocks == 2
    assert len(grid.refine([(0, 0), (1, 1), (2, 2)])) == 2
    assert grid.n_refined == 2


@pytest.mark.parametrize(("block", "factor"), [(3, 2), (4, 5)])
def test_bad_block_or_factor_is_rejected(block: int, factor: int) -> None:
    with pytest.raises(SimulationError):
        BlockGrid(Diffusion(1.0), np.zeros((1, 8, 8)), block=block, factor=factor)


def test_dam_break_with_a_lower_upstream_depth_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="hl > hr"):
        dam_break(hl=1.0, hr=2.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Diffusion(0.0),
        lambda: Diffusion(float("nan")),
        lambda: Diffusion(1.0, cfl=-0.5),
        lambda: ShallowWater(g=0.0),
    ],
)
def test_physics_with_a_non_positive_coefficient_is_refused(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match="positive finite"):
        make()

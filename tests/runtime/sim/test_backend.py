"""NumPy and torch backends give the same answer; CUDA only where it exists."""

from __future__ import annotations

import numpy as np
import pytest
from coreason_runtime import ConfigurationError
from coreason_runtime.sim import (
    Diffusion,
    MultiFidelitySimulation,
    ShallowWater,
    Watchdog,
    dam_break,
    gaussian_pulse,
    get_backend,
)

torch = pytest.importorskip("torch")


def run(backend, physics, case, tol: float, t_end: float) -> MultiFidelitySimulation:
    sim = MultiFidelitySimulation(
        physics, case, n=16, block=4, factor=2, watchdog=Watchdog(tol=tol), backend=backend
    )
    sim.run(t_end)
    return sim


@pytest.mark.parametrize("which", ["diffusion", "shallow_water"])
def test_torch_cpu_matches_numpy(which: str) -> None:
    if which == "diffusion":
        physics, case, tol, t_end = Diffusion(1.0), gaussian_pulse(sigma=0.06), 1e-3, 2e-3
    else:
        physics, case, tol, t_end = ShallowWater(), dam_break(), 0.05, 0.03
    a = run("numpy", physics, case, tol, t_end)
    b = run(get_backend("torch", device="cpu"), physics, case, tol, t_end)
    assert a.grid.blocks == b.grid.blocks and a.grid.n_refined > 0
    np.testing.assert_allclose(b.grid.coarse_numpy(), a.grid.coarse_numpy(), rtol=1e-12, atol=1e-12)


def test_torch_backend_defaults_to_cuda_only_when_available() -> None:
    assert get_backend("torch").device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_asking_for_cuda_without_cuda_is_an_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(ConfigurationError, match="cuda"):
        get_backend("torch", device="cuda")


def test_unknown_backend_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown backend"):
        get_backend("jax")


@pytest.mark.gpu
def test_cuda_run_conserves_mass() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    sim = run(
        get_backend("torch", device="cuda"), Diffusion(1.0), gaussian_pulse(sigma=0.06), 1e-3, 2e-3
    )
    assert sim.grid.backend.device == "cuda"
    assert abs(sim.grid.totals()[0] - 1.0) < 1e-12

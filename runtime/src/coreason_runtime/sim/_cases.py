"""Test cases with analytic or reference solutions: Gaussian pulse, dam break, radial bump."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import erf

from coreason_runtime._exceptions import ConfigurationError

__all__ = ["Case", "dam_break", "gaussian_pulse", "radial_bump"]

Exact = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Case:
    """Initial cell averages and, where known, exact cell averages at time ``t``.

    ``initial(x_edges, y_edges)`` and ``exact(t)(x_edges, y_edges)`` both return arrays
    shaped ``(ncomp, nx, ny)``; ``exact`` is ``None`` when only a reference run exists.
    """

    name: str
    length: float
    initial: Exact
    exact: Callable[[float], Exact] | None = None
    t_valid: float = math.inf


def _gauss_avg_1d(edges: np.ndarray, c: float, s: float, length: float, images: int) -> np.ndarray:
    out = np.zeros(len(edges) - 1)
    for k in range(-images, images + 1):  # image sources make the walls zero-flux
        for centre in (2 * k * length + c, 2 * k * length - c):
            cdf = 0.5 * erf((edges - centre) / (math.sqrt(2.0) * s))
            out += np.diff(cdf)
    return out / np.diff(edges)


def gaussian_pulse(
    *,
    kappa: float = 1.0,
    sigma: float = 0.04,
    centre: tuple[float, float] = (0.5, 0.5),
    length: float = 1.0,
    mass: float = 1.0,
    others: Sequence[tuple[tuple[float, float], float, float]] = (),
) -> Case:
    """A Gaussian of total ``mass`` diffusing between zero-flux walls (heat equation).

    Exact at every time: its variance grows as ``σ² + 2κt`` and the walls are handled by
    image sources, so cell averages come from products of ``erf`` differences. ``others``
    adds more pulses as ``(centre, sigma, mass)``; the equation is linear, so the exact
    solution is the sum.
    """
    pulses = [(centre, sigma, mass), *others]

    def at(t: float) -> Exact:
        def avg(xe: np.ndarray, ye: np.ndarray) -> np.ndarray:
            out = np.zeros((len(xe) - 1, len(ye) - 1))
            for c, sig, m in pulses:
                s = math.sqrt(sig**2 + 2 * kappa * t)
                out += m * np.outer(
                    _gauss_avg_1d(xe, c[0], s, length, 2), _gauss_avg_1d(ye, c[1], s, length, 2)
                )
            return out[None]

        return avg

    return Case("gaussian_pulse", length, at(0.0), at)


def _stoker(hl: float, hr: float, g: float) -> tuple[float, float, float]:
    def mismatch(hm: float) -> float:
        rare = 2 * (math.sqrt(g * hl) - math.sqrt(g * hm))
        shock = (hm - hr) * math.sqrt(0.5 * g * (hm + hr) / (hm * hr))
        return rare - shock

    hm = brentq(mismatch, hr, hl, xtol=1e-14)
    um = 2 * (math.sqrt(g * hl) - math.sqrt(g * hm))
    return hm, um, hm * um / (hm - hr)


def dam_break(
    *,
    hl: float = 2.0,
    hr: float = 1.0,
    x0: float = 0.5,
    g: float = 9.81,
    length: float = 1.0,
    samples: int = 16,
) -> Case:
    """A wet-bed dam break along x: Stoker's exact solution until a wave hits a wall."""
    if not hl > hr > 0:
        msg = f"dam break needs hl > hr > 0; got hl={hl}, hr={hr}"
        raise ConfigurationError(msg)
    hm, um, s = _stoker(hl, hr, g)
    cl, cm = math.sqrt(g * hl), math.sqrt(g * hm)
    t_valid = min(x0 / cl, (length - x0) / s)

    def profile(x: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        if t <= 0:
            return np.where(x < x0, hl, hr), np.zeros_like(x)
        xi = (x - x0) / t
        h = np.where(
            xi < -cl,
            hl,
            np.where(xi < um - cm, (2 * cl - xi) ** 2 / (9 * g), np.where(xi < s, hm, hr)),
        )
        u = np.where(
            xi < -cl, 0.0, np.where(xi < um - cm, 2 * (xi + cl) / 3, np.where(xi < s, um, 0.0))
        )
        return h, u

    def at(t: float) -> Exact:
        def avg(xe: np.ndarray, ye: np.ndarray) -> np.ndarray:
            q = (np.arange(samples) + 0.5) / samples
            xs = xe[:-1, None] + np.diff(xe)[:, None] * q
            h, u = profile(xs, t)
            hbar, hubar = h.mean(1), (h * u).mean(1)
            ny = len(ye) - 1
            return np.stack(
                [
                    np.repeat(hbar[:, None], ny, 1),
                    np.repeat(hubar[:, None], ny, 1),
                    np.zeros((len(hbar), ny)),
                ]
            )

        return avg

    return Case("dam_break", length, at(0.0), at, t_valid)


def radial_bump(
    *,
    depth: float = 1.0,
    amplitude: float = 0.5,
    sigma: float = 0.05,
    centre: tuple[float, float] = (0.5, 0.5),
    length: float = 1.0,
    samples: int = 4,
) -> Case:
    """Still water with a radially symmetric Gaussian hump; compare to a fine reference run."""

    def initial(xe: np.ndarray, ye: np.ndarray) -> np.ndarray:
        q = (np.arange(samples) + 0.5) / samples
        xs = (xe[:-1, None] + np.diff(xe)[:, None] * q).reshape(-1)
        ys = (ye[:-1, None] + np.diff(ye)[:, None] * q).reshape(-1)
        r2 = (xs[:, None] - centre[0]) ** 2 + (ys[None, :] - centre[1]) ** 2
        h = depth + amplitude * np.exp(-r2 / (2 * sigma**2))
        h = h.reshape(len(xe) - 1, samples, len(ye) - 1, samples).mean(axis=(1, 3))
        return np.stack([h, np.zeros_like(h), np.zeros_like(h)])

    return Case("radial_bump", length, initial)

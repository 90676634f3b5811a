"""A block-structured composite grid: coarse blocks, some refined by a factor, refluxed faces.

The coarse array always holds every block (refined blocks hold the average of their fine
cells). One step computes coarse and fine fluxes, then replaces each coarse flux on a
coarse–fine face by the mean of the fine fluxes through it (refluxing), so the mass leaving
a fine block is exactly the mass entering its coarse neighbour: total mass is conserved to
round-off. Refined blocks take several fine steps per coarse step (subcycling).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from coreason_runtime._exceptions import GridTooLargeError, SimulationError
from coreason_runtime.sim._backend import Backend, get_backend
from coreason_runtime.sim._physics import Physics

__all__ = ["BlockGrid"]

# W, E, S, N: (axis, side) of each block face.
_SIDES = ((0, 0), (0, 1), (1, 0), (1, 1))
_TEMPORARIES = 14  # arrays alive at once per cell during a step (fluxes, padded copies)


def _available_bytes(backend: Backend | None = None) -> int:
    if backend is not None and backend.device is not None and backend.device.startswith("cuda"):
        free, _total = backend.xp.cuda.mem_get_info()
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 * 2**30


class BlockGrid:
    """An ``n × n`` coarse grid on ``[0, length]²`` split into ``block × block`` blocks.

    Args:
        physics: the equations (see :class:`~coreason_runtime.sim.Physics`).
        u0: coarse cell averages, shape ``(ncomp, n, n)``.
        length: the side of the square domain.
        block: coarse cells per block side; must divide ``n``.
        factor: refinement factor of a refined block (2–4).
        backend: a :class:`Backend` (NumPy when omitted).
        memory_limit: bytes the grid may use; default half the free memory of the device
            the arrays live on (host RAM, or the GPU's for a CUDA backend).

    Raises:
        GridTooLargeError: even the coarse grid would not fit in ``memory_limit``.
        SimulationError: inconsistent sizes or a factor outside 2–4.
    """

    def __init__(
        self,
        physics: Physics,
        u0: np.ndarray,
        *,
        length: float = 1.0,
        block: int = 8,
        factor: int = 4,
        backend: Backend | None = None,
        memory_limit: int | None = None,
    ) -> None:
        u0 = np.asarray(u0, dtype=np.float64)
        if u0.ndim != 3 or u0.shape[0] != physics.ncomp or u0.shape[1] != u0.shape[2]:
            msg = f"u0 must be shaped (ncomp={physics.ncomp}, n, n); got {u0.shape}"
            raise SimulationError(msg)
        n = u0.shape[1]
        if block < 2 or n % block:
            msg = f"block size {block} must be >= 2 and divide the grid size {n}"
            raise SimulationError(msg)
        if not 2 <= factor <= 4:
            msg = f"refinement factor must be 2, 3 or 4; got {factor}"
            raise SimulationError(msg)
        backend = backend or get_backend("numpy")
        limit = memory_limit if memory_limit is not None else _available_bytes(backend) // 2
        coarse_bytes = 8 * physics.ncomp * n * n * _TEMPORARIES
        if coarse_bytes > limit:
            msg = (
                f"a {n}x{n} grid with {physics.ncomp} components needs about "
                f"{coarse_bytes / 2**20:.0f} MiB; the limit is {limit / 2**20:.0f} MiB"
            )
            raise GridTooLargeError(msg)
        self.physics = physics
        self.backend = backend
        self.n, self.bs, self.r = n, block, factor
        self.nb = n // block
        self.m = block * factor
        self.length = float(length)
        self.hc = self.length / n
        self.hf = self.hc / factor
        block_bytes = 8 * physics.ncomp * self.m * self.m * _TEMPORARIES
        #: refined blocks allowed at once so the grid stays inside the memory limit.
        self.max_fine_blocks = int(min(self.nb * self.nb, (limit - coarse_bytes) // block_bytes))
        self.u = self.backend.asarray(u0)
        self.fine = self.backend.zeros((physics.ncomp, 0, self.m, self.m))
        self.refined = np.zeros((self.nb, self.nb), dtype=bool)
        self.blocks: list[tuple[int, int]] = []  # fine slot -> block
        self._topology()

    # -- bookkeeping -----------------------------------------------------------------------

    @property
    def n_refined(self) -> int:
        return len(self.blocks)

    def block_of(self, i: int, j: int) -> tuple[int, int]:
        """The block holding coarse cell ``(i, j)``."""
        return i // self.bs, j // self.bs

    def _blocks(self, blocks: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """``blocks`` as int pairs, each checked to lie on the grid (NumPy would wrap -1)."""
        out = [(int(a), int(b)) for a, b in blocks]
        bad = [blk for blk in out if not (0 <= blk[0] < self.nb and 0 <= blk[1] < self.nb)]
        if bad:
            msg = f"blocks {bad} are outside the {self.nb}x{self.nb} block grid"
            raise SimulationError(msg)
        return out

    def region(self, block: tuple[int, int]) -> tuple[float, float, float, float]:
        """``(x0, x1, y0, y1)`` of a block."""
        w = self.bs * self.hc
        return (block[0] * w, (block[0] + 1) * w, block[1] * w, (block[1] + 1) * w)

    def _topology(self) -> None:
        be, bs, nb = self.backend, self.bs, self.nb
        slot = -np.ones((nb, nb), dtype=np.int64)
        for k, (bi, bj) in enumerate(self.blocks):
            slot[bi, bj] = k
        nf = len(self.blocks)
        b = np.array(self.blocks, dtype=np.int64).reshape(nf, 2)
        i0, j0 = b[:, 0] * bs, b[:, 1] * bs
        ar = np.arange(bs)
        self._cells = (
            be.index(i0[:, None, None] + ar[:, None]),
            be.index(j0[:, None, None] + ar[None, :]),
        )
        sides: list[dict[str, Any]] = []
        for axis, hi in _SIDES:
            d = 1 if hi else -1
            nbi = b[:, 0] + (d if axis == 0 else 0)
            nbj = b[:, 1] + (d if axis == 1 else 0)
            wall = (nbi < 0) | (nbi >= nb) | (nbj < 0) | (nbj >= nb)
            nslot = np.where(wall, -1, slot[np.clip(nbi, 0, nb - 1), np.clip(nbj, 0, nb - 1)])
            coarse = ~wall & (nslot < 0)
            # padded coarse indices of the neighbouring strip and of its tangential neighbours
            if axis == 0:
                ci = np.repeat((i0 + (bs if hi else -1) + 1)[:, None], bs, axis=1)
                cj = j0[:, None] + ar[None, :] + 1
                tang = ((ci, cj - 1), (ci, cj + 1))
            else:
                ci = i0[:, None] + ar[None, :] + 1
                cj = np.repeat((j0 + (bs if hi else -1) + 1)[:, None], bs, axis=1)
                tang = ((ci - 1, cj), (ci + 1, cj))
            sel = np.nonzero(coarse)[0]
            face = (
                (ci[sel] - 1 + (0 if hi else 1), cj[sel] - 1)
                if axis == 0
                else (ci[sel] - 1, cj[sel] - 1 + (0 if hi else 1))
            )
            sides.append(
                {
                    "strip": (be.index(ci), be.index(cj)),
                    "tang": tuple((be.index(p), be.index(q)) for p, q in tang),
                    "nslot": be.index(np.maximum(nslot, 0)),
                    "isfine": be.asarray((nslot >= 0).astype(np.float64)).reshape(1, nf, 1) > 0.5,
                    "wall": be.asarray(wall.astype(np.float64)).reshape(1, nf, 1) > 0.5,
                    "sel": be.index(sel),
                    "face": (be.index(face[0]), be.index(face[1])),
                    "nsel": len(sel),
                }
            )
        self._sides = sides
        self._off = be.asarray((np.arange(self.r) + 0.5) / self.r - 0.5)

    # -- numerics --------------------------------------------------------------------------

    def _padded(self, u: Any) -> Any:
        be, ph, xp = self.backend, self.physics, self.backend.xp
        ux = be.concat([ph.wall(xp, u[:, :1, :], 0), u, ph.wall(xp, u[:, -1:, :], 0)], 1)
        return be.concat([ph.wall(xp, ux[:, :, :1], 1), ux, ph.wall(xp, ux[:, :, -1:], 1)], 2)

    def _slopes(self, lo: Any, mid: Any, hi: Any) -> Any:
        # Monotonised-central limiter: second order where smooth, and every value it
        # interpolates within half a cell stays between the neighbours, so prolongation and
        # ghost filling never create a negative depth or density.
        xp = self.backend.xp
        a, b = mid - lo, hi - mid
        lim = xp.minimum(xp.minimum(2 * xp.abs(a), 2 * xp.abs(b)), 0.5 * xp.abs(a + b))
        return xp.where(a * b > 0, xp.sign(a) * lim, 0.0 * a)

    def _strips(self, p: Any) -> list[Any]:
        """Coarse neighbour values along each fine block face, interpolated tangentially."""
        nc, nf = self.physics.ncomp, self.n_refined
        out = []
        for side in self._sides:
            c = p[:, side["strip"][0], side["strip"][1]]
            lo = p[:, side["tang"][0][0], side["tang"][0][1]]
            up = p[:, side["tang"][1][0], side["tang"][1][1]]
            sl = self._slopes(lo, c, up)
            out.append((c[..., None] + sl[..., None] * self._off).reshape(nc, nf, self.m))
        return out

    def _fine_fluxes(self, strips: list[Any]) -> tuple[Any, Any]:
        be, ph, xp, fine = self.backend, self.physics, self.backend.xp, self.fine
        w = ph.ghost_weight(self.r)
        edges = (fine[:, :, 0, :], fine[:, :, -1, :], fine[:, :, :, 0], fine[:, :, :, -1])
        ghosts = []
        for s, (axis, _hi) in enumerate(_SIDES):
            side, edge = self._sides[s], edges[s]
            g = edge + w * (strips[s] - edge)
            g = xp.where(side["isfine"], edges[s ^ 1][:, side["nslot"]], g)
            ghosts.append(xp.where(side["wall"], ph.wall(xp, edge, axis), g))
        gw, ge, gs, gn = ghosts
        fp = be.concat([gw[:, :, None, :], fine, ge[:, :, None, :]], 2)
        z = 0.0 * gs[:, :, :1]
        fp = be.concat(
            [be.concat([z, gs, z], 2)[..., None], fp, be.concat([z, gn, z], 2)[..., None]], 3
        )
        ffx = ph.flux(xp, fp[:, :, :-1, 1:-1], fp[:, :, 1:, 1:-1], self.hf, 0)
        ffy = ph.flux(xp, fp[:, :, 1:-1, :-1], fp[:, :, 1:-1, 1:], self.hf, 1)
        return ffx, ffy

    def substeps(self, dt: float) -> int:
        """Fine steps per coarse step of ``dt`` (r² for diffusion, about r for waves)."""
        if not self.n_refined:
            return 0
        dt_f = self.physics.max_dt(self.backend, self.fine, self.hf)
        if not dt_f > 0:
            return 1 << 30
        return max(1, math.ceil(dt / dt_f * (1 - 1e-12)))

    def step(self, dt: float) -> int:
        """Advance by one coarse step ``dt``; refined blocks subcycle. Returns cell-updates.

        Berger–Colella style: a provisional coarse step gives the coarse data at both ends
        of the step; fine ghosts are interpolated linearly in time between them; the fine
        fluxes through each coarse–fine face are summed over the substeps (the flux
        register) and replace the coarse flux there before the final coarse update, so
        what leaves a fine block enters its coarse neighbour exactly.
        """
        ph, xp = self.physics, self.backend.xp
        hc = self.hc
        p0 = self._padded(self.u)
        fx = ph.flux(xp, p0[:, :-1, 1:-1], p0[:, 1:, 1:-1], hc, 0)
        fy = ph.flux(xp, p0[:, 1:-1, :-1], p0[:, 1:-1, 1:], hc, 1)
        cells: int = self.n * self.n
        if self.n_refined:
            nsub = self.substeps(dt)
            dt_f = dt / nsub
            prov = self.u - (dt / hc) * (fx[:, 1:] - fx[:, :-1] + fy[:, :, 1:] - fy[:, :, :-1])
            s0, s1 = self._strips(p0), self._strips(self._padded(prov))
            nc, bs, r = ph.ncomp, self.bs, self.r
            register: list[Any] = [0.0, 0.0, 0.0, 0.0]
            for k in range(nsub):
                theta = k / nsub
                strips = [a + theta * (b - a) for a, b in zip(s0, s1, strict=True)]
                ffx, ffy = self._fine_fluxes(strips)
                bound = (ffx[:, :, 0, :], ffx[:, :, -1, :], ffy[:, :, :, 0], ffy[:, :, :, -1])
                for s, side in enumerate(self._sides):
                    if side["nsel"]:
                        flux = bound[s][:, side["sel"]].reshape(nc, side["nsel"], bs, r)
                        register[s] = register[s] + flux.mean(-1) / nsub
                self.fine = self.fine - (dt_f / self.hf) * (
                    ffx[:, :, 1:] - ffx[:, :, :-1] + ffy[..., 1:] - ffy[..., :-1]
                )
            for s, (axis, _hi) in enumerate(_SIDES):
                side = self._sides[s]
                if side["nsel"]:
                    target = fx if axis == 0 else fy
                    target[:, side["face"][0], side["face"][1]] = register[s]
            cells += int(nsub) * self.n_refined * self.m * self.m
        self.u = self.u - (dt / hc) * (fx[:, 1:] - fx[:, :-1] + fy[:, :, 1:] - fy[:, :, :-1])
        if self.n_refined:
            self._restrict()
        return cells

    def _restrict(self) -> None:
        nc, nf, bs, r = self.physics.ncomp, self.n_refined, self.bs, self.r
        avg = self.fine.reshape(nc, nf, bs, r, bs, r).mean((3, 5))
        self.u[:, self._cells[0], self._cells[1]] = avg

    def max_dt(self) -> float:
        """The largest stable coarse step (refined blocks subcycle inside it)."""
        return self.physics.max_dt(self.backend, self.u, self.hc)

    # -- regridding ------------------------------------------------------------------------

    def refine(
        self,
        blocks: Iterable[tuple[int, int]],
        init: Callable[[tuple[int, int]], np.ndarray] | None = None,
    ) -> list[tuple[int, int]]:
        """Refine ``blocks`` (already refined ones are skipped); returns those refined.

        When the memory limit leaves room for fewer, the first ones in ``blocks`` win.

        Fine data come from ``init(block)`` (shape ``(ncomp, m, m)``) when given, else from a
        conservative slope-limited prolongation of the coarse cells.
        """
        new = list(dict.fromkeys(b for b in self._blocks(blocks) if not self.refined[b]))
        room = self.max_fine_blocks - self.n_refined
        new = new[: max(room, 0)]
        if not new:
            return []
        be, nc, bs = self.backend, self.physics.ncomp, self.bs
        b = np.array(new).reshape(len(new), 2)
        ii = b[:, 0, None, None] * bs + np.arange(bs)[:, None] + 1
        jj = b[:, 1, None, None] * bs + np.arange(bs)[None, :] + 1
        p = self._padded(self.u)
        c = p[:, be.index(ii), be.index(jj)]
        i_, j_ = be.index(ii), be.index(jj)
        sx = self._slopes(p[:, be.index(ii - 1), j_], c, p[:, be.index(ii + 1), j_])
        sy = self._slopes(p[:, i_, be.index(jj - 1)], c, p[:, i_, be.index(jj + 1)])
        off = self._off
        f = (
            c[:, :, :, None, :, None]
            + sx[:, :, :, None, :, None] * off[:, None, None]
            + sy[:, :, :, None, :, None] * off
        )
        f = f.reshape(nc, len(new), self.m, self.m)
        if init is not None:
            f = be.asarray(np.stack([np.asarray(init(blk), dtype=np.float64) for blk in new], 1))
        self.fine = be.concat([self.fine, f], 1)
        self.blocks.extend(new)
        for bi, bj in new:
            self.refined[bi, bj] = True
        self._topology()
        self._restrict()
        return new

    def coarsen(self, blocks: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """Drop the fine data of ``blocks``; their coarse cells keep the fine averages."""
        gone = {b for b in self._blocks(blocks) if self.refined[b]}
        if not gone:
            return []
        keep = [k for k, blk in enumerate(self.blocks) if blk not in gone]
        self.fine = self.fine[:, self.backend.index(keep)]
        self.blocks = [self.blocks[k] for k in keep]
        for bi, bj in gone:
            self.refined[bi, bj] = False
        self._topology()
        return sorted(gone)

    def snapshot(self) -> tuple[Any, ...]:
        """The grid's state (coarse and fine data, refined blocks), for :meth:`restore`."""
        be = self.backend
        return (be.copy(self.u), be.copy(self.fine), list(self.blocks), self.refined.copy())

    def restore(self, snap: tuple[Any, ...]) -> None:
        """Go back to a state :meth:`snapshot` took."""
        u, fine, blocks, refined = snap
        self.u, self.fine, self.blocks, self.refined = u, fine, list(blocks), refined.copy()
        self._topology()

    # -- read-out --------------------------------------------------------------------------

    def coarse_numpy(self) -> np.ndarray:
        """The coarse array (fine blocks averaged) as NumPy."""
        return self.backend.to_numpy(self.u)

    def fine_numpy(self) -> np.ndarray:
        return self.backend.to_numpy(self.fine)

    def totals(self) -> np.ndarray:
        """Integral of every component over the composite grid (fine cells where refined)."""
        u, f = self.coarse_numpy(), self.fine_numpy()
        mask = np.repeat(np.repeat(~self.refined, self.bs, 0), self.bs, 1)
        coarse = (u * mask).sum(axis=(1, 2)) * self.hc**2
        out: np.ndarray = coarse + f.sum(axis=(1, 2, 3)) * self.hf**2
        return out

    def uniform(self) -> np.ndarray:
        """The composite solution sampled on the fine resolution everywhere (for plots)."""
        u, f, bs, r, m = self.coarse_numpy(), self.fine_numpy(), self.bs, self.r, self.m
        out = np.repeat(np.repeat(u, r, 1), r, 2)
        for k, (bi, bj) in enumerate(self.blocks):
            out[:, bi * m : (bi + 1) * m, bj * m : (bj + 1) * m] = f[:, k]
        del bs
        return out

    def error_l2(self, exact: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> float:
        """Composite L2 error against exact cell averages ``exact(x_edges, y_edges)``."""
        edges = np.linspace(0.0, self.length, self.n + 1)
        u, f = self.coarse_numpy(), self.fine_numpy()
        mask = np.repeat(np.repeat(~self.refined, self.bs, 0), self.bs, 1)
        err = float((((u - exact(edges, edges)) ** 2) * mask).sum()) * self.hc**2
        for k, blk in enumerate(self.blocks):
            x0, x1, y0, y1 = self.region(blk)
            ex = exact(np.linspace(x0, x1, self.m + 1), np.linspace(y0, y1, self.m + 1))
            err += float(((f[:, k] - ex) ** 2).sum()) * self.hf**2
        return float(np.sqrt(err))

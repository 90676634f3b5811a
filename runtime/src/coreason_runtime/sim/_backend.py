"""Array backends for the solvers: NumPy, or torch (CUDA when available, else CPU)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coreason_runtime._exceptions import ConfigurationError, MissingExtraError

__all__ = ["Backend", "get_backend"]


@dataclass(frozen=True)
class Backend:
    """A thin array namespace: the kernels only call what NumPy and torch both provide.

    ``xp`` is the module (``numpy`` or ``torch``); ``device`` is ``"cpu"`` or ``"cuda"``
    for torch and ``None`` for NumPy.
    """

    name: str
    xp: Any
    device: str | None = None
    dtype: Any = field(default=None)

    def asarray(self, a: Any) -> Any:
        """``a`` as a backend array of this backend's dtype (a copy for NumPy input)."""
        if self.name == "numpy":
            return np.array(a, dtype=np.float64)
        return self.xp.as_tensor(
            np.asarray(a, dtype=np.float64), dtype=self.dtype, device=self.device
        ).clone()

    def index(self, a: Any) -> Any:
        """An integer index array usable for fancy indexing on this backend."""
        if self.name == "numpy":
            return np.asarray(a, dtype=np.intp)
        return self.xp.as_tensor(np.asarray(a, dtype=np.int64), device=self.device)

    def zeros(self, shape: tuple[int, ...]) -> Any:
        if self.name == "numpy":
            return np.zeros(shape, dtype=np.float64)
        return self.xp.zeros(shape, dtype=self.dtype, device=self.device)

    def to_numpy(self, a: Any) -> np.ndarray:
        if self.name == "numpy":
            return np.asarray(a)
        return np.asarray(a.detach().cpu().numpy(), dtype=np.float64)

    def copy(self, a: Any) -> Any:
        return a.copy() if self.name == "numpy" else a.clone()

    def concat(self, arrays: list[Any], axis: int) -> Any:
        if self.name == "numpy":
            return np.concatenate(arrays, axis=axis)
        return self.xp.cat(arrays, dim=axis)

    def isfinite_all(self, a: Any) -> bool:
        return bool(self.xp.isfinite(a).all())

    def synchronize(self) -> None:
        """Wait for queued GPU work so timings are honest; a no-op elsewhere."""
        if self.device == "cuda":
            self.xp.cuda.synchronize()


def get_backend(name: str = "numpy", *, device: str | None = None) -> Backend:
    """The backend called ``name`` (``"numpy"`` or ``"torch"``).

    For torch, ``device`` defaults to ``"cuda"`` when ``torch.cuda.is_available()`` and to
    ``"cpu"`` otherwise, so the same code runs on both. Computation is float64 throughout:
    conservation to round-off is part of the contract.

    Raises:
        MissingExtraError: torch was asked for but is not installed.
        ConfigurationError: an unknown backend name or a CUDA device without CUDA (a
            ``ValueError``).
    """
    if name == "numpy":
        return Backend("numpy", np)
    if name != "torch":
        msg = f"unknown backend {name!r}; use 'numpy' or 'torch'"
        raise ConfigurationError(msg)
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is in the dev env
        raise MissingExtraError("torch", "local") from e
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        msg = "device 'cuda' was requested but torch.cuda.is_available() is False"
        raise ConfigurationError(msg)
    return Backend("torch", torch, device=device, dtype=torch.float64)

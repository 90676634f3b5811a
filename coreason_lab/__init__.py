"""coreason-lab: ``%%coreason`` magics, live dashboards and the Oracle Circuit for Jupyter.

Load it in a notebook with ``%load_ext coreason_lab``; ``%coreason help`` lists the verbs.
Using ``%coreason`` before loading the extension fails with IPython's own
"UsageError: Line magic function `%coreason` not found": there is nothing to register until
the extension is loaded, so load it first (or list it in ``c.InteractiveShellApp.extensions``).
"""

from __future__ import annotations

from importlib import metadata as _metadata
from typing import Any as _Any

from coreason_lab._ask import AskHandle
from coreason_lab._comm import TARGET as COMM_TARGET
from coreason_lab._comm import CommBridge
from coreason_lab._display import ResultDisplay
from coreason_lab._export import OfflineHTMLExporter, export_html
from coreason_lab._magics import CoreasonMagics
from coreason_lab._oracle_circuit import OracleForm
from coreason_lab._steps import CellInvariant, CellInvariantViolation, CellThunk
from coreason_lab._throttle import Throttle

# The installed distribution's version, which hatch reads from labextension/package.json.
__version__ = _metadata.version("coreason-lab")

__all__ = [
    "COMM_TARGET",
    "AskHandle",
    "CellInvariant",
    "CellInvariantViolation",
    "CellThunk",
    "CommBridge",
    "CoreasonMagics",
    "OfflineHTMLExporter",
    "OracleForm",
    "ResultDisplay",
    "Throttle",
    "__version__",
    "export_html",
    "load_ipython_extension",
    "unload_ipython_extension",
]

_loaded: dict[int, CoreasonMagics] = {}


def load_ipython_extension(ipython: _Any, runtime: _Any = None) -> CoreasonMagics:
    """``%load_ext coreason_lab``: register ``%coreason``/``%%coreason`` and the settings.

    ``runtime`` (a Coordinator) is for tests and embedding; by default the magics use
    ``Coordinator.default()`` on first use. Loading twice keeps the first instance.
    """
    existing = _loaded.get(id(ipython))
    if existing is not None:
        return existing
    magics = CoreasonMagics(shell=ipython, runtime=runtime)
    ipython.register_magics(magics)
    if magics not in ipython.configurables:
        ipython.configurables.append(magics)  # so `%config CoreasonMagics` finds it
    magics.register_comm()  # a no-op outside a kernel (plain IPython has no frontend)
    magics.errors.install(ipython)  # coreason errors as a few lines; %tb has the rest
    _loaded[id(ipython)] = magics
    return magics


def unload_ipython_extension(ipython: _Any) -> None:
    """``%unload_ext coreason_lab``: close dashboards, comms and throttles; the runtime and its
    ledgers stay (they belong to the kernel, not to the extension)."""
    magics = _loaded.pop(id(ipython), None)
    if magics is None:
        return
    magics.close()
    magics.errors.uninstall()
    if magics in ipython.configurables:
        ipython.configurables.remove(magics)
    ipython.magics_manager.magics["line"].pop("coreason", None)
    ipython.magics_manager.magics["cell"].pop("coreason", None)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where JupyterLab finds the side panel built from labextension/ (see pyproject.toml)."""
    return [{"src": "labextension", "dest": "coreason-lab"}]

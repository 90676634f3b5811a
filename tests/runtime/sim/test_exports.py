"""The sim package exports exactly its public names, sorted, and imports no notebook stack."""

from __future__ import annotations

import subprocess
import sys

import coreason_runtime.sim as sim


def test_all_is_sorted_and_complete() -> None:
    public = {n for n in dir(sim) if not n.startswith("_")} - {"annotations"}
    assert sim.__all__ == sorted(sim.__all__)
    assert set(sim.__all__) == public


def test_importing_sim_does_not_import_torch_or_ipython() -> None:
    code = (
        "import sys, coreason_runtime.sim; "
        "print(any(m in sys.modules for m in ('torch', 'IPython', 'ipywidgets')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

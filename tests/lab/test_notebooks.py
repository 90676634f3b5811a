"""Every notebook in notebooks/ executes top to bottom in a real kernel (nbclient).

``model_cache`` (tests/_fixtures/models.py) is ``$COREASON_MODEL_CACHE`` when set, else a
folder shared by sessions, so SmolLM2 is converted once, not once per notebook.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.notebook
@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(
    path: Path, tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("COREASON_HOME", str(home))
    monkeypatch.setenv("COREASON_MODEL_CACHE", str(model_cache))  # converted model reused
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    )
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    )
    client.execute()  # raises CellExecutionError on the first unexpected error
    errors = [
        c
        for c in nb.cells
        if c.cell_type == "code"
        and any(o.get("output_type") == "error" for o in c.get("outputs", []))
        and "raises-exception" not in c.metadata.get("tags", [])
    ]
    assert errors == []
    # no dependency speaks in a cell: a warning or a progress bar is fixed at its cause
    noise = [
        (c.source.splitlines()[0], o.get("text", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == "stderr"
    ]
    assert noise == []

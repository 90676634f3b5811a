"""The Binder environment, built as repo2docker builds it, runs every notebook.

repo2docker copies the repository, creates a Python 3.11 environment, runs
``pip install -r binder/requirements.txt`` from the repository root, then ``binder/postBuild``.
This test does the same from a copy of the tracked files (nothing built in this checkout comes
along, so the side panel is built from source as on Binder), in a fresh virtual environment
that never saw ``scripts/setup.sh``, then executes every notebook in ``notebooks/`` on that
environment's kernel.

Cost is kept down the way a warm CI machine allows: pip resolves from this machine's package
indexes and its cache, and the converted model is read from the shared model cache (postBuild's
``coreason models pull`` finds it converted). PyTorch's CPU index, which the requirements name
for Binder, is not reachable from this machine: pip is told not to retry it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))

pytestmark = [pytest.mark.binder, pytest.mark.notebook, pytest.mark.model]

RUN_NOTEBOOKS = """
import sys
from pathlib import Path
import nbformat
from nbclient import NotebookClient

failed = []
for name in sys.argv[1:]:
    path = Path("notebooks") / name
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": "notebooks"}}).execute()
    errors = [c for c in nb.cells if c.cell_type == "code"
              and any(o.get("output_type") == "error" for o in c.get("outputs", []))
              and "raises-exception" not in c.metadata.get("tags", [])]
    print(name, "ok" if not errors else f"{len(errors)} unexpected error(s)", flush=True)
    failed += [name] if errors else []
sys.exit(1 if failed else 0)
"""


def _copy_tracked(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


@pytest.mark.timeout(5400)
def test_binder_builds_from_its_folder_alone_and_runs_every_notebook(
    tmp_path: Path, model_cache: Path
) -> None:
    repo, venv, home = tmp_path / "repo", tmp_path / "venv", tmp_path / "home"
    _copy_tracked(repo)
    assert not (repo / "coreason_lab" / "labextension").exists()  # built from source below
    runtime = (repo / "binder" / "runtime.txt").read_text().strip()
    assert runtime == f"python-{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV", "COREASON_HOME")
    }
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}",
        VIRTUAL_ENV=str(venv),
        HOME=env.get("HOME", str(tmp_path)),
        COREASON_HOME=str(home),
        COREASON_MODEL_CACHE=str(model_cache),
        PIP_RETRIES="0",  # PyTorch's CPU index is unreachable here: do not wait on it
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        OMP_NUM_THREADS="1",
    )
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, "-r", "binder/requirements.txt"], repo, env, timeout=2400)
    _run(["bash", "binder/postBuild"], repo, env, timeout=1200)  # checks CUDA and the panel
    freeze = _run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], repo, env, 120)
    assert not [ln for ln in freeze.splitlines() if ln.lower().startswith("nvidia")]
    assert "coreason-lab @ file://" in freeze or "coreason-lab==" in freeze  # a wheel, built
    out = _run(
        [str(venv / "bin" / "python"), "-c", RUN_NOTEBOOKS, *NOTEBOOKS], repo, env, timeout=3600
    )
    assert [ln.split()[0] for ln in out.splitlines() if ln.endswith(" ok")] == NOTEBOOKS

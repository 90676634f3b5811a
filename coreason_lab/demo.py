"""`coreason-lab demo`: run the tour notebook headless on the embedded default, say where it is.

The kernel talks to the demo over IPC sockets (a local run needs no TCP port), the console shows
one line per cell as it finishes, and the executed notebook is written beside a self-contained
web page (:mod:`coreason_lab._export`) that renders the dashboard and the Oracle Circuit with no
network. The kernel knows which notebook it runs, so the notebook's replay record answers a
second run's requests at no cost (``--no-replay`` decodes them again).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "run_notebook"]

_REPO_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _find(name: str) -> Path:
    for folder in (Path.cwd() / "notebooks", _REPO_NOTEBOOKS):
        path = folder / name
        if path.is_file():
            return path
    msg = f"cannot find notebooks/{name}; run from the repository root"
    raise SystemExit(msg)


def _first_line(cell: Any) -> str:
    text = "".join(cell.source).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= 60 else line[:59] + "…"


class CellProgress:
    """One console line per code cell as it finishes: its number, first line, time, outcome."""

    def __init__(self, nb: Any, write: Callable[[str], None]) -> None:
        self._total = sum(1 for c in nb.cells if c.cell_type == "code")
        self._write = write
        self._done = 0
        self._t0 = 0.0

    def start(self, cell: Any, cell_index: int) -> None:
        self._t0 = time.monotonic()

    def executed(self, cell: Any, cell_index: int, execute_reply: Any) -> None:
        self._done += 1
        status = (execute_reply or {}).get("content", {}).get("status", "ok")
        expected = "raises-exception" in cell.metadata.get("tags", [])
        outcome = "" if status == "ok" else (" (error, expected)" if expected else " (error)")
        width = len(str(self._total))
        self._write(
            f"[{self._done:>{width}}/{self._total}] {_first_line(cell):<60} "
            f"{time.monotonic() - self._t0:5.1f} s{outcome}"
        )


def run_notebook(
    path: Path,
    out_dir: Path,
    timeout: int = 600,
    *,
    progress: Callable[[str], None] | None = None,
    replay: bool = True,
) -> tuple[Path, Path]:
    """Execute ``path`` in a fresh kernel; write the executed copy and its offline page."""
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    from coreason_lab._export import export_html

    nb = nbformat.read(path, as_version=4)
    progress_lines = CellProgress(nb, progress or (lambda line: None))
    env = {**os.environ, "JPY_SESSION_NAME": str(path.resolve())}
    if not replay:
        env.pop("JPY_SESSION_NAME")
    # IPC sockets (no TCP port, so no "running over TCP without encryption"); an absolute
    # path, because the kernel starts in the notebook's folder and the client does not
    with tempfile.TemporaryDirectory(prefix="coreason-demo-") as sockets:
        km = KernelManager(kernel_name="python3", transport="ipc", ip=f"{sockets}/kernel")
        client = NotebookClient(
            nb,
            km=km,
            timeout=timeout,
            resources={"metadata": {"path": str(path.parent)}},
            on_cell_start=progress_lines.start,
            on_cell_executed=progress_lines.executed,
        )
        try:
            client.execute(env=env)
        finally:
            if km.has_kernel:  # the client shuts down only kernels it started itself
                km.shutdown_kernel(now=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / path.name
    nbformat.write(nb, executed)
    return executed, export_html(executed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coreason-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="execute notebooks/00_tour.ipynb headless")
    demo.add_argument("--notebook", default="00_tour.ipynb")
    demo.add_argument("--out", default=None, help="folder for the executed copy")
    demo.add_argument(
        "--no-replay",
        dest="replay",
        action="store_false",
        help="decode every request again instead of answering it from the notebook's record",
    )
    args = parser.parse_args(argv)

    from coreason_runtime._config import coreason_home

    path = _find(args.notebook)
    out = Path(args.out) if args.out else coreason_home() / "demo"
    print(
        f"running {path} in a fresh kernel (local model, SQLite ledgers in "
        f"{os.environ.get('COREASON_HOME', '~/.coreason')}, no keys) …",
        flush=True,
    )
    t0 = time.monotonic()
    executed, html_path = run_notebook(
        path, out, progress=lambda line: print(line, flush=True), replay=args.replay
    )
    print(f"done in {time.monotonic() - t0:.0f} s")
    print(f"executed notebook: {executed}")
    print(f"as a web page:     {html_path}  (self-contained: opens with no network)")
    print("open it live with:  .venv/bin/jupyter lab notebooks/00_tour.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())

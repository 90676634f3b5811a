"""`coreason-lab demo`: run the tour notebook headless on the embedded default, say where it is."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

_REPO_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _find(name: str) -> Path:
    for folder in (Path.cwd() / "notebooks", _REPO_NOTEBOOKS):
        path = folder / name
        if path.is_file():
            return path
    msg = f"cannot find notebooks/{name}; run from the repository root"
    raise SystemExit(msg)


def run_notebook(path: Path, out_dir: Path, timeout: int = 600) -> tuple[Path, Path | None]:
    """Execute ``path`` in a fresh kernel; write the executed copy (and HTML) to ``out_dir``."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / path.name
    nbformat.write(nb, executed)
    html_path: Path | None = None
    try:
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_notebook_node(nb)
        html_path = executed.with_suffix(".html")
        html_path.write_text(body)
    except ImportError:
        pass
    return executed, html_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coreason-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="execute notebooks/00_tour.ipynb headless")
    demo.add_argument("--notebook", default="00_tour.ipynb")
    demo.add_argument("--out", default=None, help="folder for the executed copy")
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
    executed, html_path = run_notebook(path, out)
    print(f"done in {time.monotonic() - t0:.0f} s")
    print(f"executed notebook: {executed}")
    if html_path is not None:
        print(f"as a web page:     {html_path}")
    print("open it live with:  .venv/bin/jupyter lab notebooks/00_tour.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())

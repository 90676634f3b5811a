"""Write one benchmark's rows into BENCHMARKS.md, replacing that benchmark's previous block.

Each script calls :func:`write_section` once with its claim, a header and rows; the block is
delimited by HTML comments so re-running one benchmark leaves the others untouched.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from filelock import FileLock

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"

_HEADER = """# Benchmarks

Every claim has one script in `benchmarks/`; each compares against a baseline or a peer *in the
same run* and reports ratios, because absolute times on these 2-core machines are noisy.
Regenerate everything with `.venv/bin/python benchmarks/run_all.py` (or one claim with
`.venv/bin/coreason bench NAME`). Each block below is rewritten by its script.
"""


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.3f}".rstrip("0").rstrip(".") if "." in f"{value:.3f}" else f"{value}"
    return str(value)


def write_section(
    name: str,
    claim: str,
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    notes: str = "",
    command: str | None = None,
) -> str:
    """Replace the block for ``name`` in BENCHMARKS.md; returns the block's markdown."""
    command = command or f".venv/bin/python benchmarks/{name}.py"
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
    lines = [
        f"<!-- bench:{name} -->",
        f"## {name}",
        "",
        f"**Claim.** {claim}",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    lines += ["", f"Command: `{command}` — {stamp}, {machine}."]
    if notes:
        lines += ["", notes.strip()]
    lines += [f"<!-- /bench:{name} -->"]
    block = "\n".join(lines)
    with FileLock(str(BENCHMARKS_MD) + ".lock"):
        text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else _HEADER
        pattern = re.compile(
            rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S
        )
        if pattern.search(text):
            text = pattern.sub(lambda _: block, text)
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        BENCHMARKS_MD.write_text(text)
    print(block)
    return block

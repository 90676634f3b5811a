"""Draw a JSONSchemaBench sample larger than shared/data/jsonschemabench-sample, reproducibly.

The public repository guidance-ai/jsonschemabench holds MaskBench's 11,306 schemas in
``maskbench/data/`` (one file per schema, the same format as the shared sample). Given a
local git copy of it, this writes every file whose name hashes into the chosen bucket:

    int(sha256(file name).hexdigest()[:8], 16) % MOD == REM

and that is not already in the shared sample, into ``--out`` (a scratch folder, not the
repository). With the defaults (MOD 10, REM 3) that is about one schema in ten, ~1,100.

    python benchmarks/draw_jsonschemabench.py --repo /path/to/jsonschemabench --out /tmp/jsb
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "jsonschemabench-sample"


def in_bucket(name: str, mod: int, rem: int) -> bool:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % mod == rem


def draw(
    repo: Path,
    out: Path,
    mod: int = 10,
    rem: int = 3,
    rev: str = "HEAD",
    shared_sample: Path = SHARED,
) -> list[str]:
    """Write the drawn files into ``out``; returns their names, sorted."""
    listing = subprocess.run(
        ["git", "-C", str(repo), "ls-tree", "--name-only", f"{rev}:maskbench/data"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    shared = {p.name for p in shared_sample.glob("*.json")}
    names = sorted(n for n in listing if n.endswith(".json") and n not in shared)
    chosen = [n for n in names if in_bucket(n, mod, rem)]
    out.mkdir(parents=True, exist_ok=True)
    for name in chosen:
        blob = subprocess.run(
            ["git", "-C", str(repo), "show", f"{rev}:maskbench/data/{name}"],
            check=True,
            capture_output=True,
        ).stdout
        (out / name).write_bytes(blob)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, required=True, help="a git copy of jsonschemabench")
    parser.add_argument("--out", type=Path, required=True, help="a scratch folder")
    parser.add_argument("--mod", type=int, default=10)
    parser.add_argument("--rem", type=int, default=3)
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--shared", type=Path, default=SHARED, help="the sample to leave out")
    args = parser.parse_args()
    if not any(args.shared.glob("*.json")):
        parser.error(f"no shared sample at {args.shared}: pass --shared")
    chosen = draw(args.repo, args.out, args.mod, args.rem, args.rev, args.shared)
    print(f"{len(chosen)} schemas written to {args.out}")


if __name__ == "__main__":
    main()

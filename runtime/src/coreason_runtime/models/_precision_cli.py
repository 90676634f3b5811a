"""`coreason models precision show|build|apply|off`: a model's per-operator precision map."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from coreason_runtime._exceptions import CoreasonError
from coreason_runtime.models._precision import (
    PrecisionMap,
    QualityBudget,
    map_file,
    probe_file,
    read_map,
)

__all__ = ["add_precision_arguments", "cmd_precision", "describe_map"]


def add_precision_arguments(sub: Any) -> None:
    """The ``precision`` subcommand of ``coreason models``."""
    p = sub.add_parser("precision", help="show / build / apply / turn off a precision map")
    p.add_argument("action", nargs="?", default="show", choices=["show", "build", "apply", "off"])
    p.add_argument("name", nargs="?", default=None, help="model (default: the default model)")
    p.add_argument("--file", type=Path, default=None, help="apply: the map file to install")
    p.add_argument("--ppl-increase", type=float, default=0.01, help="build: budget (0.01 = 1%%)")
    p.add_argument("--kl", type=float, default=None, help="build: mean-KL budget (nats)")
    p.add_argument("--greedy-match", type=float, default=None, help="build: least agreement")
    p.add_argument("--rebuild", action="store_true", help="build: probe again from scratch")
    p.add_argument("--json", action="store_true", help="show: machine-readable output")
    p.add_argument(
        "--device",
        default=None,
        help="show/build/off: the map for this device, cpu or cuda (default: the one models "
        "load on, CUDA when available); apply validates a map on the device it was built for",
    )
    p.add_argument("--cache-dir", type=Path, default=None)
    p.set_defaults(models_func=cmd_precision)


def describe_map(pmap: PrecisionMap) -> list[str]:
    """The map in lines of text: budget, validation, formats per module role, sensitive set."""
    from coreason_runtime.models._probe import group_of

    v = pmap.validation
    lines = [f"model {pmap.model} (revision {pmap.revision}), a map for {pmap.device}"]
    b = pmap.budget
    lines.append(
        f"budget: perplexity +{100 * b.ppl_increase:g}%"
        + (f", mean KL <= {b.kl:g}" if b.kl is not None else "")
        + (f", greedy agreement >= {b.greedy_match:g}" if b.greedy_match is not None else "")
    )
    if v is None:
        lines.append("validation: none (this map is refused)")
    else:
        verdict = "within budget" if pmap.valid else "BREAKS the budget (refused)"
        lines.append(
            f"validation: perplexity {v.ppl_fp32:.3f} -> {v.ppl:.3f} "
            f"({100 * v.ppl_increase:+.2f}%), mean KL {v.kl_mean:.4f}, greedy agreement "
            f"{v.greedy_match:.2f} ({v.greedy_exact}/{v.prompts} identical), torch {v.torch}: "
            f"{verdict}"
        )
    if pmap.cost_us_fp32:
        lines.append(
            f"weight time per token, as timed while probing: {pmap.cost_us / 1000:.1f} ms "
            f"(fp32 {pmap.cost_us_fp32 / 1000:.1f} ms)"
        )
    by_group: dict[str, dict[str, int]] = {}
    for name, fmt in pmap.modules.items():
        per = by_group.setdefault(group_of(name), {})
        per[fmt] = per.get(fmt, 0) + 1
    lines.append("formats (modules not listed stay fp32):")
    for group in sorted(by_group):
        counts = ", ".join(f"{n} {f}" for f, n in sorted(by_group[group].items()))
        lines.append(f"  {group:<40} {counts}")
    if pmap.sensitive:
        lines.append(f"full-precision copies for sensitive steps: {len(pmap.sensitive)} modules")
    return lines


def _budget(args: argparse.Namespace) -> QualityBudget:
    return QualityBudget(ppl_increase=args.ppl_increase, kl=args.kl, greedy_match=args.greedy_match)


def _folder(args: argparse.Namespace) -> Path:
    from coreason_runtime.models._loader import pull

    return pull(args.name, cache_dir=args.cache_dir, precision=False)


def _device(args: argparse.Namespace) -> str:
    """The kind of device (``cpu``/``cuda``) the command is about."""
    from coreason_runtime.models._formats import device_kind
    from coreason_runtime.models._loader import _pick_device

    return device_kind(_pick_device(args.device))


def _show(args: argparse.Namespace, out: TextIO) -> int:
    folder = _folder(args)
    device = _device(args)
    pmap = read_map(folder, device)
    if args.json:
        probe = folder / probe_file(device)
        data = {
            "folder": str(folder),
            "map": pmap.to_json() if pmap else None,
            "probe": json.loads(probe.read_text()) if probe.is_file() else None,
        }
        print(json.dumps(data, indent=1), file=out)
        return 0
    if pmap is None:
        print(f"no precision map for {device} in {folder}: the model loads in fp32", file=out)
        print(f"build one with `coreason models precision build --device {device}`", file=out)
        return 0
    for line in describe_map(pmap):
        print(line, file=out)
    return 0


def _build(args: argparse.Namespace, out: TextIO) -> int:
    from coreason_runtime.models._mapping import ensure_map

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    pmap = ensure_map(
        args.name,
        cache_dir=args.cache_dir,
        budget=_budget(args),
        rebuild=args.rebuild,
        progress=say,
        device=args.device,
    )
    for line in describe_map(pmap):
        print(line, file=out)
    return 0


def _apply(args: argparse.Namespace, out: TextIO) -> int:
    from coreason_runtime.models._mapping import install_map

    if args.file is None:
        print("error: `precision apply` needs --file MAP.json", file=sys.stderr)
        return 2
    pmap = install_map(args.file, args.name, cache_dir=args.cache_dir)
    for line in describe_map(pmap):
        print(line, file=out)
    return 0


def _off(args: argparse.Namespace, out: TextIO) -> int:
    folder = _folder(args)
    device = _device(args)
    (folder / map_file(device)).unlink(missing_ok=True)
    print(f"removed the {device} precision map of {folder}: it loads in fp32 there", file=out)
    return 0


_ACTIONS = {"show": _show, "build": _build, "apply": _apply, "off": _off}


def cmd_precision(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``coreason models precision ACTION``; typed errors become exit code 1."""
    out = out or sys.stdout
    try:
        return _ACTIONS[args.action](args, out)
    except CoreasonError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

"""The `coreason` command: ask, serve, budget, tiers, models, worker, cluster, bench."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coreason_runtime._exceptions import CoreasonError
from coreason_runtime._signals import interrupt_summary
from coreason_runtime.models._cli import add_arguments as models_arguments
from coreason_runtime.scale._cluster_cli import add_arguments as cluster_arguments
from coreason_runtime.serve._cli import add_arguments as serve_arguments

__all__ = ["build_parser", "main"]


def _runtime(args: argparse.Namespace) -> Any:
    from coreason_runtime import Coordinator, RuntimeConfig

    overrides: dict[str, Any] = {}
    if getattr(args, "model", None):
        overrides["model"] = args.model
    return Coordinator(RuntimeConfig(**overrides)) if overrides else Coordinator()


def _load_schema(text: str) -> dict[str, Any]:
    path = Path(text)
    raw = path.read_text() if path.is_file() else text
    try:
        schema = json.loads(raw)
    except json.JSONDecodeError as e:
        msg = f"--schema must be a JSON schema or a file holding one: {e}"
        raise SystemExit(msg) from e
    if not isinstance(schema, dict):
        msg = "--schema must be a JSON object"
        raise SystemExit(msg)
    return schema


def cmd_ask(args: argparse.Namespace) -> int:
    """One structured request; prints the JSON value, then its tier, cost and verdict on
    stderr (with ``--verify``, each field repair too).

    ``--dry-run`` prints the tier plan, the reserved worst case and what is left of Ω instead,
    running nothing (``--ceiling`` still sets Ω first).
    """
    schema = _load_schema(args.schema)
    verify = None
    if args.verify:
        from coreason_runtime.verify._spec import parse_verify

        verify = parse_verify(args.verify)
    with _runtime(args) as rt:
        if args.workflow and args.ceiling is not None:
            rt.budgets.set(args.workflow, ceiling=args.ceiling)
        if args.dry_run:
            plan = rt.router.dry_run(
                schema,
                args.prompt,
                workflow_id=args.workflow,
                max_tokens=args.max_tokens,
                tiers=args.tiers.split(",") if args.tiers else None,
            )
            print(plan)
            return 0
        res = rt.router.generate(
            schema,
            args.prompt,
            workflow_id=args.workflow,
            max_tokens=args.max_tokens,
            tiers=args.tiers.split(",") if args.tiers else None,
            seed=args.seed,
            verify=verify,
        )
        print(json.dumps(res.value, indent=2))
        verdict = "" if verify is None else f" verified={str(res.verified).lower()}"
        print(
            f"tier={res.tier} cost={res.cost:g} attempts={len(res.attempts)} "
            f"spent={rt.budgets.spent(res.workflow_id):g}{verdict}",
            file=sys.stderr,
        )
        for r in res.repairs:
            print(
                f"repair {r.field} tier={r.tier} {'accepted' if r.accepted else 'rejected'} "
                f"candidates={r.candidates} tokens_out={r.tokens_out} cost={r.cost:g} "
                f"{r.old} -> {r.new or '-'}",
                file=sys.stderr,
            )
    return 0


def cmd_budget(args: argparse.Namespace) -> int:
    """Show, set, reset or delete ledgers."""
    from coreason_runtime import Coordinator

    with Coordinator() as rt:
        cage = rt.budgets
        if args.action == "set":
            if args.workflow is None or args.ceiling is None:
                raise SystemExit("usage: coreason budget set WORKFLOW CEILING")
            cage.set(args.workflow, ceiling=args.ceiling)
        elif args.action == "reset":
            if args.workflow is None:
                raise SystemExit("usage: coreason budget reset WORKFLOW")
            cage.reset(args.workflow)
        elif args.action == "delete":
            if args.workflow is None:
                raise SystemExit("usage: coreason budget delete WORKFLOW")
            cage.delete(args.workflow)
        ledgers = (
            [cage.get(args.workflow)]
            if args.workflow and args.action != "delete"
            else cage.workflows()
        )
        if args.json:
            print(json.dumps([led.model_dump() for led in ledgers], indent=2))
            return 0
        print(
            f"{'workflow':<24} {'ceiling':>12} {'spent':>12} {'reserved':>10} "
            f"{'in':>8} {'out':>8}  by tier"
        )
        for led in ledgers:
            ceiling = "-" if led.ceiling is None else f"{led.ceiling:g}"
            tiers = ", ".join(f"{k}={v:g}" for k, v in sorted(led.by_tier.items()))
            print(
                f"{led.workflow_id:<24} {ceiling:>12} {led.spent:>12g} {led.reserved:>10g} "
                f"{led.tokens_in:>8} {led.tokens_out:>8}  {tiers}"
            )
    return 0


def cmd_tiers(args: argparse.Namespace) -> int:
    """The tier matrix: each tier's kind, weights, capability, health, success rate and C."""
    from coreason_runtime.route import format_tiers, tier_rows

    with _runtime(args) as rt:
        rows = tier_rows(rt)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(format_tiers(rows, rt.tiers.settings.policy))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    return int(args.models_func(args) or 0)


def cmd_serve(args: argparse.Namespace) -> int:
    from coreason_runtime.serve import _cli

    return int(_cli.cmd_serve(args) or 0)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a Temporal worker executing structured requests on this machine's runtime."""
    import os

    from coreason_runtime.scale import WorkerOptions, run_worker

    redis_url = args.redis or os.environ.get("COREASON_REDIS_URL")
    if not redis_url:
        msg = "coreason worker needs the deployment's Redis: --redis URL or COREASON_REDIS_URL"
        raise SystemExit(msg)
    threads = args.threads or os.environ.get("COREASON_WORKER_THREADS")
    run_worker(
        WorkerOptions(
            redis_url=redis_url,
            temporal=args.temporal,
            deployment=args.deployment,
            name=args.name,
            task_queue=args.queue,
            concurrency=args.concurrency,
            setup=args.setup,
            model=args.model,
            threads=int(threads) if threads else None,
            warm=args.warm,
        )
    )
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    """Start (``up``), stop (``down``) or show (``status``) a deployment on this machine."""
    from coreason_runtime.scale._cluster_cli import run

    return run(args)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run one benchmark script (or all) from the repository's benchmarks/ folder."""
    root = Path(args.root).resolve()
    bench_dir = root / "benchmarks"
    if not bench_dir.is_dir():
        msg = f"no benchmarks/ folder under {root}; run from the repository or pass --root"
        raise SystemExit(msg)
    if args.name in (None, "all"):
        return subprocess.call([sys.executable, str(bench_dir / "run_all.py")])
    name = args.name if args.name.startswith("bench_") else f"bench_{args.name}"
    script = bench_dir / f"{name.removesuffix('.py')}.py"
    if not script.is_file():
        known = sorted(p.stem for p in bench_dir.glob("bench_*.py"))
        msg = f"no benchmark {args.name!r}; known: {', '.join(known)}"
        raise SystemExit(msg)
    return subprocess.call([sys.executable, str(script)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coreason", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="one structured request through the router")
    ask.add_argument("prompt")
    ask.add_argument("--schema", required=True, help="a JSON schema, or a file holding one")
    ask.add_argument("--workflow", "-w", default=None)
    ask.add_argument("--ceiling", type=float, default=None, help="set Ω for --workflow first")
    ask.add_argument("--tiers", default=None, help="comma-separated, e.g. local or oracle")
    ask.add_argument("--max-tokens", type=int, default=None)
    ask.add_argument("--seed", type=int, default=None)
    ask.add_argument("--model", default=None, help="local model id or folder")
    ask.add_argument(
        "--verify",
        default=None,
        help="verifiers, e.g. 'derivative(of=x**3, result=derivative)' (comma-separated)",
    )
    ask.add_argument(
        "--dry-run", action="store_true", help="print the tier plan and reserved cost; run nothing"
    )
    ask.set_defaults(func=cmd_ask)

    serve = sub.add_parser("serve", help="OpenAI-compatible server over the local tier")
    serve_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    budget = sub.add_parser("budget", help="show / set / reset ledgers")
    budget.add_argument(
        "action", choices=["show", "set", "reset", "delete"], nargs="?", default="show"
    )
    budget.add_argument("workflow", nargs="?")
    budget.add_argument("ceiling", nargs="?", type=float)
    budget.add_argument("--json", action="store_true")
    budget.set_defaults(func=cmd_budget)

    tiers = sub.add_parser("tiers", help="the tier matrix with observed success rate and cost")
    tiers.add_argument("--json", action="store_true")
    tiers.set_defaults(func=cmd_tiers)

    models = sub.add_parser("models", help="provision / list local models, precision maps")
    models_arguments(models)
    models.set_defaults(func=cmd_models)

    worker = sub.add_parser("worker", help="run a Temporal worker for structured requests")
    worker.add_argument("--temporal", default="127.0.0.1:7233", help="Temporal frontend address")
    worker.add_argument("--redis", default=None, help="the deployment's Redis URL")
    worker.add_argument("--deployment", default="default")
    worker.add_argument("--name", default=None, help="this worker's name (default host-pid)")
    worker.add_argument("--queue", default="coreason")
    worker.add_argument("--concurrency", type=int, default=4, help="requests at once")
    worker.add_argument("--setup", default=None, help="module:function called with the runtime")
    worker.add_argument("--model", default=None)
    worker.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch compute threads (default $COREASON_WORKER_THREADS, else torch's default)",
    )
    worker.add_argument(
        "--no-warm",
        dest="warm",
        action="store_false",
        help="take requests before the model is loaded (the first one loads it)",
    )
    worker.set_defaults(func=cmd_worker)

    cluster = sub.add_parser("cluster", help="Temporal, Redis and N workers on this machine")
    cluster_arguments(cluster)
    cluster.set_defaults(func=cmd_cluster)

    bench = sub.add_parser("bench", help="run a benchmark (writes its row to BENCHMARKS.md)")
    bench.add_argument("name", nargs="?", default=None)
    bench.add_argument("--root", default=".")
    bench.set_defaults(func=cmd_bench)
    return parser


def _negative_values(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--`` before a negative number argparse would read as an option.

    argparse takes ``-inf`` or ``-1e3`` for an unknown option; after ``--`` it is a value,
    which the command then refuses with its own typed error (``coreason budget set wf -inf``).
    """
    args = list(argv)
    if "--" in args:
        return args
    for i, token in enumerate(args):
        if token.startswith("-") and token[1:2] not in ("", "-"):
            try:
                float(token)
            except ValueError:
                continue
            return [*args[:i], "--", *args[i:]]
    return args


def _report(e: CoreasonError) -> None:
    """An error on stderr: its type and message, then why each attempt failed."""
    print(f"coreason: {type(e).__name__}: {e}", file=sys.stderr)
    for a in e.attempts:
        if a.ok:
            continue
        why = (a.error or "").strip().splitlines()
        reason = why[0][:300] if why else "no reason recorded"
        print(f"  {a.tier}#{a.index}: {a.error_type}: {reason}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coreason`` script."""
    args = build_parser().parse_args(_negative_values(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.func(args))
    except CoreasonError as e:
        _report(e)
        return 2
    except KeyboardInterrupt as e:
        summary = interrupt_summary(e)  # what the interrupted request ran and cost
        if summary is not None:
            print(f"coreason: {summary}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""Structured output that always completes: the real SmolLM2 answers JSONSchemaBench schemas
through the router's local tier, before vs after length-aware closing, truncation-aware
correction and relaxed grammars, with peers on the same schemas in the same run.

Schemas: the first ``--n`` of a folder in the order of sha256(file name), keeping those whose
compact JSON is at most ``--max-chars`` characters (the whole schema goes into the prompt of
a 135M model). ``--data`` takes several folders, one set each, all in one run and one
section: the shared sample and a drawn one (``benchmarks/draw_jsonschemabench.py``).

Peers (``--peers PYTHON``) run in a scratch venv, never a project dependency:

    python -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install torch==2.13.0
    /tmp/peers-venv/bin/pip install torch==2.13.0 transformers==5.25.0 outlines==1.3.3 \\
        xgrammar==0.2.8 jsonschema
    python benchmarks/bench_structured_complete.py --peers /tmp/peers-venv/bin/python
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "jsonschemabench-sample"
PROMPT = "Give one realistic example of the JSON value this schema describes."


def pick(folder: Path, n: int, max_chars: int) -> list[dict[str, Any]]:
    """The first ``n`` usable schemas of ``folder`` by sha256 of the file name."""
    from coreason_runtime import SchemaError
    from coreason_runtime.tensor import SchemaSpec

    files = sorted(folder.glob("*.json"), key=lambda f: hashlib.sha256(f.name.encode()).digest())
    chosen: list[dict[str, Any]] = []
    for f in files:
        schema = json.loads(f.read_text())["schema"]
        if (
            not isinstance(schema, dict)
            or len(json.dumps(schema, separators=(",", ":"))) > max_chars
        ):
            continue
        try:
            SchemaSpec.from_user(schema)
        except SchemaError:
            continue
        chosen.append({"file": f.name, "schema": schema})
        if len(chosen) == n:
            break
    return chosen


@contextlib.contextmanager
def policy_before_issue_18() -> Iterator[None]:
    """The correction loop before: a truncation was fed back like any failed validation,
    with the same max_tokens, and an output repeating an earlier failed one was tried again."""
    from coreason_runtime.tensor import _attempts, _correction
    from coreason_runtime.tensor._types import FailureKind

    saved = _correction.NEXT[FailureKind.TRUNCATED]
    saved_next = _attempts.next_try

    def next_ignoring_repeats(last: Any, outcome: Any) -> Any:
        return saved_next(last, dataclasses.replace(outcome, repeat_of=None))

    _correction.NEXT[FailureKind.TRUNCATED] = _correction.NEXT[FailureKind.INVALID_JSON]
    _attempts.next_try = next_ignoring_repeats  # type: ignore[assignment]
    try:
        yield
    finally:
        _correction.NEXT[FailureKind.TRUNCATED] = saved
        _attempts.next_try = saved_next


def valid_by_jsonschema(schema: dict[str, Any], text: str) -> bool:
    """An independent check of an accepted answer against the original schema."""
    import jsonschema

    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    cls = jsonschema.validators.validator_for(schema)
    return not any(True for _ in cls(schema).iter_errors(value))


def run_local(
    loaded: Any, items: list[dict[str, Any]], *, after: bool, max_tokens: int, attempts: int
) -> list[dict[str, Any]]:
    from coreason_runtime import EpistemicYieldError, EventBus
    from coreason_runtime.budget import BudgetCage
    from coreason_runtime.tensor import TensorRouter
    from coreason_runtime.tensor._compiler import UniversalCompiler, clear_cache
    from coreason_runtime.tensor._local import LocalTier
    from coreason_runtime.tensor._types import FailureKind

    clear_cache()
    bus = EventBus()
    budgets = BudgetCage(bus=bus)
    compiler = UniversalCompiler(loaded, timeout=60.0, bus=bus, relax=after)
    tier = LocalTier(loaded, compiler, bus=bus, close_values=after, timeout=600.0)
    router = TensorRouter(
        [tier], budgets, bus, max_attempts_per_tier=attempts, default_max_tokens=max_tokens
    )
    out = []
    for i, item in enumerate(items):
        wf = f"s{i}"
        budgets.set(wf, ceiling=None)
        t0 = time.perf_counter()
        row: dict[str, Any] = {"file": item["file"]}
        try:
            ctx = contextlib.nullcontext() if after else policy_before_issue_18()
            with ctx:
                res = router.generate(item["schema"], PROMPT, workflow_id=wf, seed=0, cache=False)
            row.update(ok=True, text=res.text, closed=res.closed)
            row["accepted_invalid"] = not valid_by_jsonschema(item["schema"], res.text)
            tried = res.attempts
        except EpistemicYieldError as e:
            row.update(ok=False, text=None, closed=None, accepted_invalid=False)
            tried = e.attempts
        row["attempts"] = len([a for a in tried if not a.skipped])
        row["refused"] = any(a.failure is FailureKind.COMPILE for a in tried)
        row["truncated"] = sum(a.failure is FailureKind.TRUNCATED for a in tried)
        row["failures"] = [a.failure.value for a in tried if a.failure is not None]
        row["tokens_out"] = sum(a.tokens_out for a in tried)
        row["cost"] = sum(a.cost for a in tried)
        row["seconds"] = time.perf_counter() - t0
        out.append(row)
        print(("after " if after else "before"), json.dumps(row)[:300], flush=True)
    return out


def peer_jobs(loaded: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat the local tier decodes for each schema, and its length in prompt tokens."""
    from coreason_runtime.tensor import SchemaSpec
    from coreason_runtime.tensor._compiler import UniversalCompiler
    from coreason_runtime.tensor._local import LocalTier

    tier = LocalTier(loaded, UniversalCompiler(loaded))
    jobs = []
    for item in items:
        compiled = tier.compiler.compile(SchemaSpec.from_user(item["schema"]))
        messages = tier.schema_messages([{"role": "user", "content": PROMPT}], compiled)
        jobs.append(
            {
                "file": item["file"],
                "schema": item["schema"],
                "messages": messages,
                "tokens_in": len(tier.encode_messages(messages)),
            }
        )
    return jobs


def score_peer(rows: list[dict[str, Any]], jobs: list[dict[str, Any]], max_tokens: int) -> None:
    """A peer's rows judged like ours: valid, truncated (ran to the limit unparsed), invalid
    handed back (JSON the schema rejects: a peer has no validation), C = T_in + 3 T_out."""
    for row, job in zip(rows, jobs, strict=True):
        text = row.get("text")
        parsed = False
        if text is not None:
            with contextlib.suppress(json.JSONDecodeError):
                json.loads(text)
                parsed = True
        row["ok"] = parsed and valid_by_jsonschema(job["schema"], text or "")
        row["truncated"] = int(not parsed and row["tokens_out"] >= max_tokens - 2)
        row["accepted_invalid"] = parsed and not row["ok"]
        row["cost"] = job["tokens_in"] + 3 * row["tokens_out"] if text is not None else 0.0


#: the address space a peer process may take (a schema that outgrows it kills that process)
PEER_MEMORY_GIB = 8


def run_peers(
    python: str, loaded: Any, items: list[dict[str, Any]], max_tokens: int
) -> dict[str, list[dict[str, Any]]]:
    """Each peer on the same chat prompts, in the scratch venv (``_peers_structured.py``):
    one process per peer for every set, rows in the order of ``items``."""
    from coreason_runtime.models._loader import pull

    jobs = peer_jobs(loaded, items)
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        todo = Path(tmp) / "jobs.json"
        spec = {"model": str(pull()), "max_tokens": max_tokens, "jobs": jobs}
        todo.write_text(json.dumps({**spec, "memory_gib": PEER_MEMORY_GIB}))
        for peer in ("outlines", "xgrammar"):
            rows = _peer_rows(python, peer, todo, Path(tmp) / f"{peer}.json", jobs)
            if rows is None:
                continue
            score_peer(rows, jobs, max_tokens)
            results[peer] = rows
    return results


def _peer_rows(
    python: str, peer: str, todo: Path, done: Path, jobs: list[dict[str, Any]]
) -> list[dict[str, Any]] | None:
    """One row per job: the peer runs in a process from the first job it has no row for; when
    the process dies (killed at its memory cap on a schema, say) that job's row says so and a
    new process goes on from the next one. ``None`` when the peer does not run at all."""
    n = len(jobs)
    rows: list[dict[str, Any]] = []
    while len(rows) < n:
        start = len(rows)
        done.unlink(missing_ok=True)
        script = str(ROOT / "benchmarks" / "_peers_structured.py")
        cmd = [python, script, peer, str(todo), str(done), str(start)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        rows += json.loads(done.read_text()) if done.exists() else []
        if proc.returncode == 0 and len(rows) == n:
            break
        if len(rows) == start and start == 0 and proc.returncode > 0:
            print(f"peer {peer} failed:\n{proc.stderr[-3000:]}", flush=True)
            return None
        if len(rows) < n:  # the process died on job len(rows)
            job = jobs[len(rows)]
            why = f"peer process died (exit {proc.returncode}) on this schema"
            print(f"peer {peer}: {why}: {job['file']}", flush=True)
            rows.append(
                {"file": job["file"], "text": None, "tokens_out": 0, "seconds": 0.0, "error": why}
            )
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    ok = sum(r["ok"] for r in rows)
    tokens = sum(r["tokens_out"] for r in rows)
    return {
        "n": n,
        "ok": ok,
        "truncated_lost": sum((not r["ok"]) and r.get("truncated", 0) > 0 for r in rows),
        "truncated_attempts": sum(r.get("truncated", 0) for r in rows),
        "refused": sum(r.get("refused", False) for r in rows),
        "accepted_invalid": sum(r.get("accepted_invalid", False) for r in rows),
        "closed": sum(r.get("closed") is not None for r in rows if r["ok"]),
        "tokens": tokens,
        "tokens_per_valid": tokens / ok if ok else float("nan"),
        "cost_per_valid": sum(r.get("cost", 0.0) for r in rows) / ok if ok else float("nan"),
        "seconds": sum(r.get("seconds", 0.0) for r in rows),
    }


def _pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100.0 * a / b:.0f}%)" if b else "-"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every run's rows per set of schemas, with what the notes need (``meta``)."""
    import torch
    from coreason_runtime.models import load_model

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load = [os.getloadavg()[0]]
    loaded = load_model()
    picked = {str(folder): pick(folder, args.n, args.max_chars) for folder in args.data}
    kw = {"max_tokens": args.max_tokens, "attempts": args.attempts}
    sets: dict[str, dict[str, Any]] = {}
    for folder, items in picked.items():
        sets[folder] = {"before": run_local(loaded, items, after=False, **kw)}
        load.append(os.getloadavg()[0])
        sets[folder]["after"] = run_local(loaded, items, after=True, **kw)
        load.append(os.getloadavg()[0])
    if args.peers:
        every = [item for items in picked.values() for item in items]
        peers = run_peers(args.peers, loaded, every, args.max_tokens)
        for peer, rows in peers.items():
            at = 0
            for folder, items in picked.items():
                sets[folder][peer] = rows[at : at + len(items)]
                at += len(items)
        load.append(os.getloadavg()[0])
    meta = {
        "schemas": {folder: len(items) for folder, items in picked.items()},
        "seconds": time.perf_counter() - started,
        "load": load,
    }
    return {"meta": meta, "sets": sets}


def rescore(args: argparse.Namespace, dump: dict[str, Any]) -> None:
    """Judge the peers' rows of a dump again (the rows themselves are kept as they ran)."""
    from coreason_runtime.models import load_model

    loaded = None
    for folder, runs in dump["sets"].items():
        peers = [k for k in ("outlines", "xgrammar") if k in runs]
        if peers:
            loaded = loaded or load_model()
            jobs = peer_jobs(loaded, pick(Path(folder), args.n, args.max_chars))
            for peer in peers:
                score_peer(runs[peer], jobs, args.max_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data", type=Path, nargs="+", default=[DATA], help="folders of schemas: one set each"
    )
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--max-chars", type=int, default=3000)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--attempts", type=int, default=3)
    parser.add_argument("--peers", default=None, help="python of a scratch venv with the peers")
    parser.add_argument("--section", default="bench_structured_complete")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dump", type=Path, default=None, help="write every row here (JSON)")
    parser.add_argument(
        "--from-dump", type=Path, default=None, help="rebuild the table from a --dump file"
    )
    parser.add_argument("--meta", default=None, help="JSON meta for a dump written without it")
    args = parser.parse_args()
    if args.from_dump is not None:
        dump = json.loads(args.from_dump.read_text())
        dump.setdefault("meta", json.loads(args.meta) if args.meta else {})
        if "sets" not in dump:  # a dump of one set, written before sets
            runs = {
                k: dump.pop(k) for k in ("before", "after", "outlines", "xgrammar") if k in dump
            }
            dump["sets"] = {str(args.data[0]): runs}
        rescore(args, dump)
    else:
        dump = measure(args)
    if args.dump is not None:
        args.dump.write_text(json.dumps(dump, indent=1))
    report(args, dump)


def _row(label: str, run: str, runs: list[dict[str, Any]]) -> list[object]:
    s = summary(runs)
    cost = s["cost_per_valid"]
    return [
        label,
        run,
        _pct(s["ok"], s["n"]),
        _pct(s["truncated_lost"], s["n"]),
        s["truncated_attempts"],
        _pct(s["refused"], s["n"]),
        s["accepted_invalid"],
        s["closed"],
        round(s["tokens_per_valid"], 1) if s["ok"] else "-",
        round(cost, 1) if cost == cost else "-",
    ]


def _label(folder: str) -> str:
    name = Path(folder).name
    return "shared sample" if name == DATA.name else f"`{name}` (drawn)"


def _peer_deaths(dump: dict[str, Any]) -> str:
    """The schemas a peer's process died on (each counted unanswered for that peer)."""
    died = [
        f"{peer} on {row['file']}"
        for runs in dump["sets"].values()
        for peer in ("outlines", "xgrammar")
        for row in runs.get(peer, [])
        if str(row.get("error") or "").startswith("peer process died")
    ]
    if not died:
        return ""
    return (
        f"A peer's process died (killed at its {PEER_MEMORY_GIB} GiB address-space cap, or "
        "aborted) on: "
        + ", ".join(died)
        + "; each counts unanswered for that peer, and a new process went on from the next. "
    )


def _goals(dump: dict[str, Any]) -> str:
    """Each set's goals (no truncation lost, >= 90% answered, 0 invalid), met or MISSED."""
    parts = []
    for folder, runs in dump["sets"].items():
        s = summary(runs["after"])
        b = summary(runs["before"])
        checks = [
            ("no answer lost to truncation", s["truncated_lost"] == 0),
            (">= 90% answered locally", s["n"] and s["ok"] >= 0.9 * s["n"]),
            ("0 invalid returned", s["accepted_invalid"] == 0),
            (
                "tokens per valid no more than before",
                s["tokens_per_valid"] <= b["tokens_per_valid"],
            ),
        ]
        said = "; ".join(f"{what}: {'met' if ok else 'MISSED'}" for what, ok in checks)
        parts.append(f"{_label(folder)}: {said}")
    return "Goals, after: " + ". ".join(parts) + "."


def report(args: argparse.Namespace, dump: dict[str, Any]) -> None:
    meta = dump["meta"]
    rows: list[list[object]] = []
    ran: set[str] = set()
    for folder, runs in dump["sets"].items():
        label = _label(folder)
        rows.append(
            _row(label, "local, before (bare grammar, exact compile, old retries)", runs["before"])
        )
        rows.append(
            _row(label, "local, after (closing, relaxed compile, truncation-aware)", runs["after"])
        )
        for peer in ("outlines", "xgrammar"):
            if peer in runs:
                ran.add(peer)
                rows.append(_row(label, f"peer: {peer} (1 attempt)", runs[peer]))
    counts = meta.get("schemas", {})
    sizes = ", ".join(f"{n} from {_label(f)}" for f, n in counts.items()) if counts else "-"
    load = ", ".join(f"{x:.1f}" for x in meta.get("load", []))
    notes = (
        f"Schemas: {sizes}; in each folder the first by sha256 of the file name whose compact "
        f"JSON is at most {args.max_chars} characters. The drawn set is every MaskBench schema "
        f"of guidance-ai/jsonschemabench (maskbench/data at ba103c73) not in the shared sample "
        f"whose name hashes into bucket 3 of 10 (int(sha256(name)[:8], 16) % 10 == 3): 1,078 "
        f"schemas, written by `benchmarks/draw_jsonschemabench.py --repo <git copy> --out "
        f"/tmp/c18/jsb-draw`. SmolLM2-135M-Instruct on CPU ({args.threads} torch thread(s)), "
        f"greedy first attempt with seed 0, up to {args.attempts} attempts (later ones sample "
        f"at T=0.4, 0.8, as the router does), max_tokens {args.max_tokens}, the router's local "
        f"tier only (a failure yields), prompt: {PROMPT!r} with the local tier's schema hint. "
        f"'before' is the bare grammar with exact compile and the old retries (a truncation "
        f"re-asked at the same max_tokens, an output repeating an earlier failure tried "
        f"again); 'after' adds length-aware closing, relaxed compile, truncation-aware retries "
        f"and leaving the tier on a repeated failed output. 'truncated: lost' counts schemas "
        f"left unanswered with a truncated attempt among their failures (a peer: its answer "
        f"ran to the limit and does not parse). 'invalid returned': for the local tier, "
        f"accepted answers that fail a jsonschema re-check against the original schema (goal "
        f"0); for a peer, JSON it returned that the schema rejects (peers do not validate). "
        f"Tokens per valid answer: output tokens of every attempt (failed ones included) over "
        f"the answered schemas; C = T_in + 3 T_out likewise. Peers decode the same chat prompt "
        f"(same tokenizer, same chat template) greedily with {args.max_tokens} new tokens, "
        f"once: outlines {'' if 'outlines' in ran else '(not run) '}with its default backend, "
        f"transformers + xgrammar {'' if 'xgrammar' in ran else '(not run) '}through its "
        f"logits processor (its default JSON whitespace); they have no correction loop. "
        f"{_peer_deaths(dump)}{_goals(dump)} {meta.get('seconds', float('nan')):.0f} s in all; "
        f"load average {load or '-'} (start, after each local run, end) on the shared 2-core "
        "machine."
    )
    data = " ".join(str(d) for d in args.data)
    write_section(
        args.section,
        "A local answer is never lost to truncation, and the correction loop never repeats an "
        "identical failed attempt: share of JSONSchemaBench schemas answered validly by the "
        "local tier, truncations, refusals, invalid returned (0), tokens per valid answer.",
        [
            "set",
            "run",
            "valid answers",
            "truncated: lost",
            "truncated attempts",
            "refused at compile",
            "invalid returned",
            "closed early",
            "output tokens per valid",
            "C per valid",
        ],
        rows,
        notes=notes,
        command=f".venv/bin/python benchmarks/bench_structured_complete.py --data {data} "
        f"--n {args.n} --section {args.section}" + (f" --peers {args.peers}" if args.peers else ""),
    )


if __name__ == "__main__":
    main()

"""Peers for bench_structured_complete, run by a scratch venv's python (never the project's):
outlines with its default backend, and transformers + xgrammar's logits processor.

    python _peers_structured.py PEER JOBS.json OUT.json [START]

JOBS.json: {"model": folder, "max_tokens": n, "jobs": [{"file", "schema", "messages"}],
"memory_gib": cap}; OUT.json: one row per job from START on, {"file", "text" (None on an
error), "tokens_out", "seconds", "error"}, rewritten after every job, so a peer process that
dies on one schema (a regex automaton that outgrows memory is killed, not raised) keeps the
rows before it and the caller starts a new process after that schema. The address space is
capped at ``memory_gib`` (default 8) so such a schema fails fast instead of taking the
machine's memory.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any


def _outlines(model: Any, tok: Any, prompt: str, schema: dict[str, Any], n: int) -> str:
    import outlines
    from outlines.types import JsonSchema

    wrapped = outlines.from_transformers(model, tok)
    return str(wrapped(prompt, JsonSchema(json.dumps(schema)), max_new_tokens=n, do_sample=False))


_XGR: dict[str, Any] = {}


def _xgrammar(model: Any, tok: Any, prompt: str, schema: dict[str, Any], n: int) -> str:
    import xgrammar as xgr

    if "compiler" not in _XGR:
        info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=model.config.vocab_size)
        _XGR["compiler"] = xgr.GrammarCompiler(info)
    grammar = _XGR["compiler"].compile_json_schema(json.dumps(schema))
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(
        **ids,
        max_new_tokens=n,
        do_sample=False,
        logits_processor=[xgr.contrib.hf.LogitsProcessor(grammar)],
    )
    return str(tok.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True))


RUN = {"outlines": _outlines, "xgrammar": _xgrammar}


def main() -> None:
    peer, todo, done = sys.argv[1:4]
    start = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    with open(todo) as f:
        spec = json.load(f)
    cap = int(float(spec.get("memory_gib", 8)) * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(int(spec.get("threads", 1)))
    tok = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    rows: list[dict[str, Any]] = []
    for job in spec["jobs"][start:]:
        prompt = tok.apply_chat_template(
            job["messages"], tokenize=False, add_generation_prompt=True
        )
        t0 = time.perf_counter()
        try:
            text: str | None = RUN[peer](model, tok, prompt, job["schema"], spec["max_tokens"])
            error = None
        except Exception as e:  # a peer that cannot take a schema answers nothing
            text, error = None, f"{type(e).__name__}: {e}"[:300]
        n = len(tok(text, add_special_tokens=False)["input_ids"]) if text else 0
        rows.append(
            {
                "file": job["file"],
                "text": text,
                "tokens_out": n,
                "seconds": time.perf_counter() - t0,
                "error": error,
            }
        )
        print(peer, json.dumps(rows[-1])[:200], flush=True)
        with open(done, "w") as f:
            json.dump(rows, f)


if __name__ == "__main__":
    main()

"""llama.cpp as a peer: decode the same prompts under the same JSON schema, report tokens/s.

Runs in its own scratch environment, never the project's (llama.cpp is a peer to measure, not a
dependency). Build it once from source, as the benchmark that uses it documents::

    python3.11 -m venv /tmp/llamacpp-venv
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF" \\
        /tmp/llamacpp-venv/bin/pip install --no-binary llama-cpp-python llama-cpp-python==0.3.36

(cmake and a C++ compiler; ~30 minutes on two shared cores). Speaks JSON lines on stdin and
stdout, so a benchmark can interleave it with its own runs: the first line sets up (``gguf``,
``schema``, ``n``, ``threads``); then each ``{"ids": [...]}`` decodes that prompt and answers
the tokens generated, wall and prompt-evaluation seconds and the text, and ``{"ppl_ids":
[...]}`` answers the perplexity of those tokens under llama.cpp's own kernels.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def main() -> None:
    import llama_cpp
    from llama_cpp import Llama, LlamaGrammar

    job = json.loads(sys.stdin.readline())
    llm = Llama(
        model_path=job["gguf"],
        n_ctx=4096,
        n_threads=job["threads"],
        n_threads_batch=job["threads"],
        verbose=False,
    )
    grammar = LlamaGrammar.from_json_schema(json.dumps(job["schema"]), verbose=False)
    _answer({"version": llama_cpp.__version__})
    for line in sys.stdin:
        ask = json.loads(line)
        if "ppl_ids" in ask:
            _answer({"ppl": _ppl(job, ask["ppl_ids"])})
            continue
        ids = ask["ids"]
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)  # the prompt alone: its time is left out of the decode rate
        prefill = time.perf_counter() - t0
        llm.reset()
        t0 = time.perf_counter()
        out = llm.create_completion(
            ids,
            max_tokens=job["n"],
            temperature=0.0,
            top_k=1,
            repeat_penalty=1.0,
            grammar=grammar,
        )
        _answer(
            {
                "tokens": out["usage"]["completion_tokens"],
                "seconds": time.perf_counter() - t0,
                "prefill_seconds": prefill,
                "text": out["choices"][0]["text"],
            }
        )


def _answer(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def _ppl(job: dict[str, Any], ids: list[int]) -> float:
    """Perplexity of ``ids`` under llama.cpp's own kernels (Q4_1 weights)."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(
        model_path=job["gguf"],
        n_ctx=4096,
        n_threads=job["threads"],
        n_threads_batch=job["threads"],
        logits_all=True,
        verbose=False,
    )
    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -logp[np.arange(len(ids) - 1), ids[1:]].mean()
    return float(np.exp(nll))


if __name__ == "__main__":
    main()

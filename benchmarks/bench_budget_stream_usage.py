"""Claim: a streamed oracle is metered by real token counts, so the final charge equals the
server's usage and a budget cut-off lands within one chunk of Ω.

Through a real `coreason serve` subprocess (the real SmolLM2, streaming 8 tokens per chunk
with ``--stream-interval 8``, as servers that batch their output do), the RemoteTier is metered
three ways, in the same run:

- usage on every chunk: it asks for ``stream_options.continuous_usage_stats`` (the default);
- tokenizer: the server's usage is not asked for per chunk; chunks are counted with the
  model's tokenizer (the fallback for servers that send none);
- one token per chunk: the metering before this change (baseline).

Uncut: a greedy request under a large Ω; its ledger charge is compared with the usage the
server reports for the same request asked directly over HTTP. Cut: Ω leaves room for the
prompt and 100 output tokens, but another request in flight already consumed 60 tokens' worth
(its lease unsettled), so the stream can only have 40; the lease waits 2 s for that room, then
cuts the stream. Overshoot: output tokens the server really streamed (its final usage when it
came, else the content chunks received, the crossing one included, × 8) beyond the 40 that
fit, in tokens and in chunks; and the ledger's overshoot of Ω in C.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collections.abc import Callable  # noqa: E402

from coreason_runtime import BudgetExceededError, EventBus, OracleConfig  # noqa: E402
from coreason_runtime.budget import BudgetCage, Reservation  # noqa: E402
from coreason_runtime.tensor import TierRequest  # noqa: E402
from coreason_runtime.tensor._compiler import UniversalCompiler  # noqa: E402
from coreason_runtime.tensor._remote import RemoteTier  # noqa: E402
from coreason_runtime.tensor._schema import SchemaSpec  # noqa: E402
from coreason_runtime.tensor._usage import TokenizerCounter  # noqa: E402

from benchmarks._report import write_section  # noqa: E402
from benchmarks._servers import serve_subprocess  # noqa: E402

CHUNK = 8  # tokens per streamed chunk (--stream-interval)
FIT, HELD = 40, 60  # output tokens left to the stream; tokens another request consumed
MODES = ("usage on every chunk", "tokenizer", "one token per chunk (before)")
SCHEMA = {
    "type": "object",
    "properties": {"essay": {"type": "string", "minLength": 1500}},
    "required": ["essay"],
}
MESSAGES = [
    {"role": "system", "content": "Write long essays."},
    {"role": "user", "content": "Write a long essay about the heat equation."},
]


class ChunkCounter:
    """The lease as the tier's meter, counting the content chunks charged (one output charge
    per chunk received, the one that crossed the ceiling included)."""

    def __init__(self, lease: Reservation) -> None:
        self.lease = lease
        self.chunks = 0
        self.reported_out: int | None = None  # the server's own count, when it came

    @property
    def max_out(self) -> int:
        return self.lease.max_out

    def ensure(
        self,
        tokens_in: int = 0,
        tokens_out: int = 0,
        *,
        interrupted: Callable[[], bool] | None = None,
    ) -> bool:
        return self.lease.ensure(tokens_in, tokens_out, interrupted=interrupted)

    def check(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        self.lease.check(tokens_in, tokens_out)

    def charge(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        if not tokens_in:
            self.chunks += 1
        self.lease.charge(tokens_in, tokens_out)

    def correct(self, tokens_in: int, tokens_out: int) -> None:
        self.reported_out = tokens_out
        self.lease.correct(tokens_in, tokens_out)


def response_format(compiled: Any) -> dict[str, Any]:
    fmt: dict[str, Any] = compiled.openai
    return fmt if fmt.get("type") == "json_schema" else {"type": "json_schema", "json_schema": fmt}


def tier_for(mode: str, port: int, bus: EventBus, counter: TokenizerCounter) -> RemoteTier:
    config = OracleConfig(base_url=f"http://127.0.0.1:{port}/v1", model="local", timeout=600)
    if mode == MODES[0]:
        return RemoteTier(config, bus)
    if mode == MODES[1]:
        return RemoteTier(config, bus, usage_per_chunk=False, token_counter=counter)
    return RemoteTier(config, bus, usage_per_chunk=False)


def request(compiled: Any, max_tokens: int) -> TierRequest:
    return TierRequest(
        messages=MESSAGES,
        schema=compiled,
        max_tokens=max_tokens,
        workflow_id="bench",
        temperature=0.0,
        seed=0,
        timeout=600,
    )


def server_usage(port: int, compiled: Any, max_tokens: int) -> tuple[int, int]:
    """The usage `coreason serve` reports for the same greedy request, asked directly."""
    import httpx

    body = {
        "model": "local",
        "messages": MESSAGES,
        "response_format": response_format(compiled),
        "max_completion_tokens": max_tokens,
        "temperature": 0.0,
        "seed": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    usage = None
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line.removeprefix("data: "))
                usage = chunk.get("usage") or usage
    assert usage is not None
    return int(usage["prompt_tokens"]), int(usage["completion_tokens"])


def uncut(mode: str, port: int, compiled: Any, counter: TokenizerCounter) -> tuple[float, int]:
    """(ledger charge, output tokens) of one uncut greedy request."""
    cage = BudgetCage()
    cage.set("bench", ceiling=100_000)
    tier = tier_for(mode, port, EventBus(), counter)
    lease = cage.open("bench", tier.count_prompt(MESSAGES, compiled), 48, "oracle")
    out = tier.complete(request(compiled, 48), lease)
    lease.settle()
    tier.close()
    return cage.spent("bench"), out.tokens_out


def cut(
    mode: str, port: int, compiled: Any, counter: TokenizerCounter, prompt: int
) -> dict[str, Any]:
    """A stream that another request's consumption cuts after FIT output tokens."""
    cage = BudgetCage(lease_wait=2.0)
    estimate = prompt  # the same prompt the uncut runs measured
    ceiling = estimate + 3 * (FIT + HELD)
    cage.set("bench", ceiling=ceiling)
    other = cage.open("bench", 0, HELD, "other")
    other.charge(tokens_out=HELD)  # in flight, its room consumed: nothing will come back
    tier = tier_for(mode, port, EventBus(), counter)
    lease = cage.open("bench", estimate, 300, "oracle")
    meter = ChunkCounter(lease)
    error = None
    try:
        tier.complete(request(compiled, 300), meter)
    except BudgetExceededError as e:
        error = e
    finally:
        lease.settle()
        other.settle()
        tier.close()
    streamed = meter.reported_out if meter.reported_out is not None else meter.chunks * CHUNK
    ledger = cage.get("bench")
    return {
        "cut": error is not None,
        "streamed": streamed,
        "charged_out": ledger.tokens_out - HELD,
        "over_tokens": streamed - FIT,
        "ledger_overshoot": max(ledger.spent - ceiling, 0.0),
    }


def main() -> None:
    os.environ.setdefault("COREASON_MODEL_CACHE", str(Path.home() / ".coreason" / "models"))
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="bench-stream-usage-"))
    compiled = UniversalCompiler(None).compile(SchemaSpec.from_user(SCHEMA))
    counter = TokenizerCounter(None)
    rows: list[list[object]] = []
    with serve_subprocess(workdir, extra_args=["--stream-interval", str(CHUNK)]) as port:
        usage_in, usage_out = server_usage(port, compiled, 48)
        server_charge = usage_in + 3 * usage_out
        for mode in MODES:
            charge, tokens_out = uncut(mode, port, compiled, counter)
            c = cut(mode, port, compiled, counter, usage_in)
            print(mode, charge, tokens_out, c, flush=True)
            rows.append(
                [
                    mode,
                    charge,
                    server_charge,
                    "yes" if charge == server_charge else "NO",
                    FIT,
                    c["streamed"],
                    c["charged_out"],
                    c["over_tokens"],
                    f"{c['over_tokens'] / CHUNK:.2f}",
                    c["ledger_overshoot"],
                    "yes" if c["cut"] and c["over_tokens"] <= CHUNK else "NO",
                ]
            )
    shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    exact = rows[0]
    write_section(
        "bench_budget_stream_usage",
        "Through a real `coreason serve`, the oracle's stream is metered by the server's own "
        "usage on every chunk: the final charge equals the server's usage, and a budget "
        "cut-off lands within one chunk of Ω (one token per chunk, the metering before, "
        "overshoots by several chunks).",
        [
            "metering",
            "final charge C (uncut)",
            "server's usage C",
            "equal",
            "output tokens that fit",
            "streamed at cut-off",
            "charged at cut-off",
            "overshoot (tokens)",
            "overshoot (chunks)",
            "ledger overshoot C",
            "≤ one chunk",
        ],
        rows,
        notes=(
            f"Goals, usage on every chunk: final charge = server's usage "
            f"({'met' if exact[3] == 'yes' else 'MISSED'}); overshoot at cut-off ≤ one chunk "
            f"({'met' if exact[-1] == 'yes' else 'MISSED'}). Uncut, every metering ends equal "
            "to the server's usage (the final usage chunk trues it up; it now also corrects "
            "downwards); they differ where the stream is cut before that chunk. Server usage "
            f"of the uncut request: {usage_in} prompt + {usage_out} output tokens "
            "(C = T_in + 3·T_out). Streamed at cut-off: the server's final usage when it "
            "came, else content chunks received "
            f"(the crossing one included) × {CHUNK} tokens per chunk. The tokenizer row's "
            "ledger stays under Ω because a stream cut before its usage chunk never learns its "
            "prompt count (the lease held room for it; only what was reported or counted is "
            "charged). Load average (1/5/15 min) before "
            f"{load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, after "
            f"{load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} (shared 2-core "
            "machine)."
        ),
    )


if __name__ == "__main__":
    main()

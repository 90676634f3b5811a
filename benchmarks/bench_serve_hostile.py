"""`coreason serve` under a hostile client: well-behaved clients' p99 latency while one client
sends oversize bodies and prompts longer than the model's context, against no hostile client.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# the converted model where `scripts/setup.sh` put it (as the tests find it)
os.environ.setdefault(
    "COREASON_MODEL_CACHE",
    str(Path(os.environ.get("COREASON_HOME", "~/.coreason")).expanduser() / "models"),
)

from benchmarks._report import write_section  # noqa: E402
from tests._fixtures.serve import ServeProcess, start_serve  # noqa: E402

PER_CLIENT = int(os.environ.get("REQUESTS", "20"))
CLIENTS = 2
MODEL = os.environ.get("BENCH_SERVE_MODEL", "smollm2")


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def _polite(server: ServeProcess, latencies: list[float], seed: int) -> None:
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": "Name a prime number."}],
        "max_tokens": 12,
        "temperature": 0,
        "seed": seed,
    }
    headers = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=300) as c:
        for _ in range(PER_CLIENT):
            t0 = time.perf_counter()
            r = c.post("/v1/chat/completions", json=body)
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)


def _hostile(
    server: ServeProcess, stop: threading.Event, kind: str, counts: dict[str, int]
) -> None:
    headers = {"Authorization": f"Bearer {server.token}", "content-type": "application/json"}
    huge = b'{"messages": [{"role": "user", "content": "' + b"x" * (5 << 20) + b'"}]}'
    long = {"messages": [{"role": "user", "content": "word " * 40_000}], "max_tokens": 8}
    with httpx.Client(base_url=server.url, headers=headers, timeout=300) as c:
        while not stop.is_set():
            try:
                if kind == "oversize body":
                    r = c.post("/v1/chat/completions", content=huge)
                else:
                    r = c.post("/v1/chat/completions", json=long)
                counts[str(r.status_code)] = counts.get(str(r.status_code), 0) + 1
            except httpx.HTTPError:
                counts["dropped"] = counts.get("dropped", 0) + 1


def phase(server: ServeProcess, hostile: str | None) -> tuple[list[float], dict[str, int]]:
    latencies: list[float] = []
    counts: dict[str, int] = {}
    stop = threading.Event()
    attacker = None
    if hostile is not None:
        attacker = threading.Thread(target=_hostile, args=(server, stop, hostile, counts))
        attacker.start()
        time.sleep(1.0)
    clients = [
        threading.Thread(target=_polite, args=(server, latencies, i)) for i in range(CLIENTS)
    ]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    stop.set()
    if attacker is not None:
        attacker.join()
    return latencies, counts


def main() -> None:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        server = start_serve(MODEL, Path(work))
        try:
            phase(server, None)  # warm-up
            rows = []
            base: list[float] = []
            notes = []
            for label, kind in (
                ("no hostile client (baseline)", None),
                ("+ 5 MB bodies", "oversize body"),
                ("+ 40k-token prompts", "over context"),
            ):
                lat, counts = phase(server, kind)
                base = base or lat
                ratio = _pct(lat, 0.99) / _pct(base, 0.99)
                rows.append(
                    [
                        label,
                        len(lat),
                        round(statistics.median(lat) * 1000),
                        round(_pct(lat, 0.99) * 1000),
                        round(ratio, 2),
                        "met" if ratio <= 1.5 else "MISSED",
                    ]
                )
                if counts:
                    notes.append(f"{label}: hostile answers {dict(sorted(counts.items()))}")
        finally:
            server.stop()
    load = os.getloadavg()[0]
    write_section(
        "bench_serve_hostile",
        "Well-behaved clients of `coreason serve` keep their p99 latency within 1.5x of the "
        "no-attack run while one client floods it with oversize bodies or prompts longer than "
        "the model's context (refused before the model: 413 / 400 context_length_exceeded).",
        ["phase", "polite requests", "p50 ms", "p99 ms", "p99 / baseline", "goal 1.5x"],
        rows,
        notes=(
            f"{MODEL} on CPU behind `coreason serve` (default limits: 1 MiB body, context "
            f"checked before prefill, queue 16). {CLIENTS} polite clients send {PER_CLIENT} "
            "requests each, one after another (12 tokens, greedy); the hostile client sends "
            "back to back from 1 s before. " + "; ".join(notes) + f". Load average {load:.1f} "
            f"on 2 cores shared with other work; {time.perf_counter() - t0:.0f} s in all."
        ),
    )


if __name__ == "__main__":
    main()

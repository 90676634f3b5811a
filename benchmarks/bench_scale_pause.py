"""Pause a request decoding on another process (a Temporal worker) from a client's
``rt.controls.pause``: the intent crosses Redis and the worker's decode parks at its next layer
boundary. Latency from the client's call to the worker's ``decode.paused``, p50 / p99, against
the same pause given in the decoding process itself."""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402

PAUSES = int(os.environ.get("PAUSES", "40"))
# long enough to outlast the pauses, inside the model's context (100_000 is refused up front
# with ContextLengthError)
MAX_TOKENS = 4096
PROMPT = "Write a long story about a lighthouse keeper and the storm that changed her life."
SCHEMA = {
    "type": "object",
    # the story cannot close early: the decode is still running when the pauses come
    "properties": {"title": {"type": "string"}, "story": {"type": "string", "minLength": 2000}},
    "required": ["title", "story"],
}


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


class _Probe:
    """The wall-clock stamp of the next ``decode.paused`` / ``decode.resumed`` of a workflow,
    published by the decoding process (relayed over Redis when that is a worker)."""

    def __init__(self, rt: Any, source_prefix: str) -> None:
        from coreason_runtime import EventType

        self.prefix = source_prefix
        self.parked, self.moving, self.token = (
            threading.Event(),
            threading.Event(),
            threading.Event(),
        )
        self.at = 0.0
        rt.bus.subscribe(
            self._on, [EventType.DECODE_PAUSED, EventType.DECODE_RESUMED, EventType.TOKENS]
        )

    def _on(self, event: Any) -> None:
        from coreason_runtime import EventType

        if not (event.source or "").startswith(self.prefix):
            return
        if event.type is EventType.DECODE_PAUSED:
            self.at = event.ts  # stamped where the decode parked
            self.parked.set()
        elif event.type is EventType.DECODE_RESUMED:
            self.moving.set()
        else:
            self.token.set()


def pauses(
    rt: Any, wf: str, probe: _Probe, n: int, rng: random.Random, step_s: float
) -> list[float]:
    """Pause the running decode of ``wf`` ``n`` times at random moments; latencies in ms."""
    lat: list[float] = []
    for _ in range(n):
        time.sleep(rng.uniform(0.2, 1.2) * step_s)
        probe.parked.clear()
        probe.moving.clear()
        t0 = time.time()
        rt.controls.pause(wf)
        if not probe.parked.wait(30):
            msg = "the decode did not park"
            raise TimeoutError(msg)
        lat.append(1000 * (probe.at - t0))
        rt.controls.resume(wf)
        if not probe.moving.wait(30):
            msg = "the decode did not resume"
            raise TimeoutError(msg)
    return lat


def remote(base: Path, n: int, step_s: float) -> tuple[list[float], dict[str, Any]]:
    """Pauses of a decode on a worker process, given by this process's ``rt.controls``."""
    from coreason_runtime.scale import ClusterClient, LocalCluster, cluster_runtime

    with LocalCluster(
        base / "cluster", workers=1, concurrency=1, env={"COREASON_SUBGOAL_CACHE": "0"}
    ) as cluster:
        rt = cluster_runtime(cluster.redis_url, home=base / "client")
        client = ClusterClient(rt, temporal=cluster.temporal_address, redis_url=cluster.redis_url)
        rt.budgets.set("remote", ceiling=None)
        probe = _Probe(rt, "w1/")
        handle = client.ask(SCHEMA, PROMPT, workflow_id="remote", max_tokens=MAX_TOKENS)
        if not probe.token.wait(600):
            msg = "the worker's decode never started"
            raise TimeoutError(msg)
        lat = pauses(rt, "remote", probe, n, random.Random(0), step_s)
        rt.controls.abort("remote")  # end the long answer
        outcome = handle.result(120)
        ledger = rt.budgets.get("remote")
        exact = {
            "status": outcome.status,
            "exact": ledger.reserved < 1e-6 and abs(ledger.spent - outcome.cost) < 1e-9,
            "spent": ledger.spent,
        }
        client.close()
        rt.close()
    return lat, exact


def local(base: Path, n: int) -> tuple[list[float], float]:
    """The baseline: the same pauses given in the process that decodes (no Redis, no worker)."""
    from coreason_runtime import Coordinator, RuntimeConfig, WorkflowAbortedError

    rt = Coordinator(RuntimeConfig(home=base / "local", subgoal_cache=False, oracle=None))
    rt.budgets.set("local", ceiling=None)
    warm = (
        rt.router.tier("local")
        .load()
        .complete_text(  # type: ignore[attr-defined]
            [{"role": "user", "content": "Count."}], 24, ignore_eos=True
        )
    )
    step_s = warm.extra["forward_seconds"] / max(warm.tokens_out - 1, 1)
    probe = _Probe(rt, "")

    def ask() -> None:
        with contextlib.suppress(WorkflowAbortedError):
            rt.router.generate(SCHEMA, PROMPT, workflow_id="local", max_tokens=MAX_TOKENS)

    worker = threading.Thread(target=ask)
    worker.start()
    probe.token.wait(120)
    lat = pauses(rt, "local", probe, n, random.Random(0), step_s)
    rt.controls.abort("local")
    worker.join(60)
    rt.close()
    return lat, step_s


def main() -> None:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        local_lat, step_s = local(base, PAUSES)
        remote_lat, exact = remote(base, PAUSES, step_s)
    rows = []
    for label, lat in (
        ("other process, via Redis (worker)", remote_lat),
        ("same process (baseline)", local_lat),
    ):
        rows.append(
            [
                label,
                len(lat),
                round(statistics.median(lat), 2),
                round(_pct(lat, 0.99), 2),
                round(max(lat), 2),
            ]
        )
    ratio = statistics.median(remote_lat) / statistics.median(local_lat)
    load = os.getloadavg()
    p99 = _pct(remote_lat, 0.99)
    goal = f"Goal remote p99 < 100 ms: {'met' if p99 < 100 else 'MISSED'}."
    write_section(
        "bench_scale_pause",
        "`rt.controls.pause(wf)` in a notebook or script parks the decode of that workflow on "
        "another process (a Temporal worker) at its next decoder-layer boundary, through the "
        "deployment's Redis channel, within tens of milliseconds (p99).",
        ["where the decode runs", "pauses", "p50 ms", "p99 ms", "max ms"],
        rows,
        notes=(
            f"SmolLM2-135M-Instruct (fp32, CPU, one torch thread per process), greedy, grammar "
            f"on; one long answer paused {PAUSES} times at random moments 0.2–1.2 token steps "
            f"({1000 * step_s:.0f} ms) apart and resumed each time. Latency: the client's "
            "`rt.controls.pause` call until the decoding process stamps `decode.paused` (both "
            "wall clocks of this machine; on the worker the event is relayed back over Redis, "
            "so the client can see it). The remote path: the client's controls emit the intent, "
            "its bridge publishes it on the deployment's channel, the worker's bridge applies "
            f"it to the worker's controls, whose decode parks. Remote/same-process p50 ratio "
            f"{ratio:.2f}. The long answer was then aborted from the client: outcome "
            f"`{exact['status']}`, ledger exact (nothing reserved, spent = the outcome's cost) "
            f"{'yes' if exact['exact'] else 'NO'}. {goal} "
            f"Load average {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores (shared); "
            f"{time.perf_counter() - t0:.0f} s in all."
        ),
    )


if __name__ == "__main__":
    main()

"""A deployment on one machine: Temporal, Redis (persistent) and three worker processes.

Workers answer with a paced scripted tier (20 tokens, 50 ms each, charged one by one), so a
request spends about a second decoding: long enough to be killed, paused or cut off mid-way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from coreason_runtime import Coordinator
from coreason_runtime.scale import DEMO_SCHEMA, ClusterClient, LocalCluster, cluster_runtime
from coreason_runtime.scale._client import RequestHandle

from tests.runtime.scale._helpers import wait_for

pytestmark = [pytest.mark.temporal, pytest.mark.redis, pytest.mark.timeout(900)]

HEARTBEAT_S = 3.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    env = {"COREASON_SUBGOAL_CACHE": "0", "COREASON_DEMO_TOKEN_S": "0.05"}
    with LocalCluster(
        tmp_path_factory.mktemp("cluster"),
        workers=3,
        setup="coreason_runtime.scale._demo:paced",
        env=env,
    ) as c:
        yield c


@pytest.fixture(scope="module")
def rt(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    runtime = cluster_runtime(cluster.redis_url, home=tmp_path_factory.mktemp("client"))
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def client(cluster: LocalCluster, rt: Coordinator) -> Iterator[ClusterClient]:
    with ClusterClient(rt, temporal=cluster.temporal_address, redis_url=cluster.redis_url) as c:
        yield c


def _ask(client: ClusterClient, n: int, budgets: list[str], tag: str) -> list[RequestHandle]:
    return [
        client.ask(
            DEMO_SCHEMA,
            f"{tag} question {i}",
            workflow_id=budgets[i % len(budgets)],
            max_tokens=30,
            heartbeat_timeout_s=HEARTBEAT_S,
        )
        for i in range(n)
    ]


def _quiet(rt: Coordinator, budgets: list[str]) -> bool:
    """No reservation held on these ledgers, none left in the store."""
    import redis

    r = redis.Redis.from_url(rt.config.redis_url or "", decode_responses=True)
    held = r.hlen("coreason:budget:reservations")
    r.close()
    return held == 0 and all(rt.budgets.get(b).reserved < 1e-6 for b in budgets)


def _lease_holder(cluster: LocalCluster) -> str | None:
    """The live worker holding the most leases with consumption, if any holds one."""
    import redis

    names = {p.pid: n for n, p in cluster.procs.items() if p.poll() is None}
    r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    leases: dict[str, str] = r.hgetall("coreason:budget:reservations")  # type: ignore[assignment]
    r.close()
    held: dict[str, int] = {}
    for key, raw in leases.items():
        rec = json.loads(raw)
        if not key.endswith(":granted") and rec["pid"] in names and rec["consumed"] > 0:
            held[names[rec["pid"]]] = held.get(names[rec["pid"]], 0) + 1
    return max(held, key=lambda n: held[n]) if held else None


def _history_total(rt: Coordinator, wf: str) -> tuple[float, float]:
    """C of every settled charge of ``wf``, and of those recovered from dead owners."""
    charges = rt.budgets.history(wf, limit=100_000)
    recovered = sum(c.cost for c in charges if c.note.startswith("recovered"))
    return sum(c.cost for c in charges), recovered


def test_sixty_requests_over_four_budgets_never_overshoot_and_the_ledgers_match_the_workers(
    cluster: LocalCluster, rt: Coordinator, client: ClusterClient
) -> None:
    rt.budgets.set("share-probe", ceiling=None)
    (probe,) = _ask(client, 1, ["share-probe"], "probe")
    cost = probe.result(120).cost
    budgets = [f"share-{i}" for i in range(4)]
    for b in budgets:  # 15 requests each, room for about 12: some must stop at the ceiling
        rt.budgets.set(b, ceiling=12.5 * cost)
    handles = _ask(client, 60, budgets, "share")

    def settled() -> list[dict[str, Any]] | None:
        states = [h.state() for h in handles]
        done = all(s["state"] in ("answered", "suspended") for s in states)
        return states if done and _quiet(rt, budgets) else None

    states = wait_for(settled, "every request to answer or suspend", timeout=300)
    suspended = [h for h, s in zip(handles, states, strict=True) if s["state"] == "suspended"]
    for b in budgets:
        ledger = rt.budgets.get(b)
        assert ledger.ceiling is not None and ledger.spent <= ledger.ceiling  # overshoot 0
    assert suspended, "no request reached its ceiling"
    for h in suspended:
        h.top_up(2 * cost)
    outcomes = [h.result(300) for h in handles]  # a top-up each is room enough for it
    assert {o.status for o in outcomes} == {"answered"}
    assert len({o.worker for o in outcomes}) == 3  # every worker took requests
    by_worker = client.consumed()
    for b in budgets:
        ledger = rt.budgets.get(b)
        assert ledger.ceiling is not None and ledger.spent <= ledger.ceiling
        assert ledger.reserved == pytest.approx(0, abs=1e-6)
        consumed = sum(per_wf.get(b, 0.0) for per_wf in by_worker.values())
        assert ledger.spent == pytest.approx(consumed, abs=1e-6)  # charged = consumed
        assert ledger.spent == pytest.approx(_history_total(rt, b)[0], abs=1e-6)


def test_workers_killed_every_few_seconds_lose_no_request_and_no_charge(
    cluster: LocalCluster, rt: Coordinator, client: ClusterClient
) -> None:
    budgets = ["kill-a", "kill-b"]
    for b in budgets:
        rt.budgets.set(b, ceiling=None)
    handles = _ask(client, 24, budgets, "kill")
    killed = []
    for _ in range(3):
        # a worker mid-request holds a lease with consumption (a worker merely `running` an
        # activity may be between leases, waiting for room: killing it leaves nothing to recover)
        victim = wait_for(lambda: _lease_holder(cluster), "a worker mid-request", 60)
        cluster.kill_worker(victim)  # SIGKILL, mid-decode
        killed.append(victim)
        cluster.start_worker()
        time.sleep(2.0)  # the fault schedule: a kill every few seconds, not a wait for a result
    outcomes = [h.result(300) for h in handles]
    assert [o.status for o in outcomes] == ["answered"] * 24  # each once: one result each
    wait_for(lambda: _quiet(rt, budgets), "the dead workers' leases to be recovered", 60)
    recovered = 0.0
    for b in budgets:
        total, rec = _history_total(rt, b)
        recovered += rec
        assert rt.budgets.spent(b) == pytest.approx(total, abs=1e-6)
    assert recovered > 0, "no killed request was charged at its checkpoint"
    assert sum(rt.budgets.spent(b) for b in budgets) >= sum(o.cost for o in outcomes)
    cluster.wait_for_workers(sorted(cluster.procs), timeout=180)


def test_redis_crashing_mid_run_loses_no_settled_charge(
    cluster: LocalCluster, rt: Coordinator, client: ClusterClient
) -> None:
    budgets = ["crash-a", "crash-b"]
    for b in budgets:
        rt.budgets.set(b, ceiling=None)
    handles = _ask(client, 24, budgets, "crash")
    wait_for(lambda: sum(rt.budgets.get(b).requests for b in budgets) >= 4, "some charges")
    before = {b: rt.budgets.history(b, limit=100_000) for b in budgets}
    cluster.redis.kill()  # SIGKILL: no shutdown save; the fsync'd append-only file is all
    cluster.redis.start()
    outcomes = [h.result(300) for h in handles]
    assert {o.status for o in outcomes} == {"answered"}
    wait_for(lambda: _quiet(rt, budgets), "every lease to be settled", 60)
    by_worker = client.consumed()
    for b in budgets:
        after = rt.budgets.history(b, limit=100_000)
        assert after[: len(before[b])] == before[b]  # everything settled before the crash
        consumed = sum(per_wf.get(b, 0.0) for per_wf in by_worker.values())
        assert rt.budgets.spent(b) == pytest.approx(consumed, abs=1e-6)
        assert rt.budgets.spent(b) == pytest.approx(_history_total(rt, b)[0], abs=1e-6)


def test_a_temporal_server_restart_mid_run_is_survived(
    cluster: LocalCluster, rt: Coordinator, client: ClusterClient
) -> None:
    rt.budgets.set("restart", ceiling=None)
    handles = _ask(client, 12, ["restart"], "restart")
    wait_for(lambda: rt.budgets.get("restart").requests >= 2, "some requests to finish")
    cluster.temporal.stop()
    cluster.temporal.start()
    outcomes = [h.result(300) for h in handles]
    assert {o.status for o in outcomes} == {"answered"}
    assert rt.budgets.spent("restart") >= sum(o.cost for o in outcomes)
    wait_for(lambda: _quiet(rt, ["restart"]), "every lease to be settled", 60)


def test_the_cluster_writes_where_everything_is(cluster: LocalCluster) -> None:
    state = json.loads((Path(cluster.workdir) / "cluster.json").read_text())
    assert state["temporal"] == cluster.temporal_address
    assert state["redis_url"] == cluster.redis_url
    assert {"w1", "w2", "w3"} <= set(state["pids"])

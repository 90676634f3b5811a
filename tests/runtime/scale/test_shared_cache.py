"""A verified answer one worker paid for is a free hit on another: the subgoal cache is in Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from coreason_runtime import Coordinator
from coreason_runtime.scale import DEMO_SCHEMA, AskInput, PacedTier, cluster_runtime, start_request

from tests.runtime.scale._helpers import run_with_workers

pytestmark = [pytest.mark.temporal, pytest.mark.redis]


def _runtime(home: Path, redis_url: str) -> Coordinator:
    rt = cluster_runtime(redis_url, home=home)
    rt.router.set_tiers([PacedTier("local", tokens=8, token_s=0.0)])
    return rt


@pytest.fixture
def pair(tmp_path: Path, redis_url: str) -> Iterator[tuple[Coordinator, Coordinator]]:
    first, second = _runtime(tmp_path / "a", redis_url), _runtime(tmp_path / "b", redis_url)
    first.budgets.set("wf-a", ceiling=None)
    first.budgets.set("wf-b", ceiling=None)
    yield first, second
    first.close()
    second.close()


def test_an_answer_solved_on_one_worker_is_a_hit_on_another(
    temporal_server, redis_url: str, pair: tuple[Coordinator, Coordinator]
) -> None:
    first, second = pair
    prompt = "Name eight words about lighthouses."

    async def scenario(client, queue):
        # each worker polls its own queue, so the second request cannot run where the first did
        one = await start_request(
            client, AskInput(DEMO_SCHEMA, prompt, "wf-a", max_tokens=20), task_queue=f"{queue}-1"
        )
        solved = await one.result()
        two = await start_request(
            client, AskInput(DEMO_SCHEMA, prompt, "wf-b", max_tokens=20), task_queue=f"{queue}-2"
        )
        return solved, await two.result()

    solved, hit = run_with_workers(
        temporal_server.address, redis_url, [first, second], scenario, separate_queues=True
    )
    assert (solved.worker, solved.tier) == ("w1", "local") and solved.cost > 0
    assert (hit.worker, hit.tier, hit.cost) == ("w2", "cache", 0.0)
    assert hit.value == solved.value
    assert second.cache.stats()["by_kind"]["request"]["hits"] == 1
    assert first.budgets.spent("wf-b") == 0.0

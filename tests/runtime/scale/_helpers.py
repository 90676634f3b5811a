"""Helpers for the cluster tests: in-process workers on their own runtimes, waits with deadlines."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from coreason_runtime import Coordinator
from coreason_runtime.scale import ClusterWorker

T = TypeVar("T")


def run_with_workers(
    temporal_address: str,
    redis_url: str,
    runtimes: Sequence[Coordinator],
    scenario: Callable[[Any, str], Awaitable[T]],
    *,
    deployment: str = "default",
    separate_queues: bool = False,
) -> T:
    """Run ``scenario(client, task_queue)`` while one in-process worker serves each runtime
    (named ``w1``, ``w2`` ...) on a fresh task queue (or worker ``wN`` alone on
    ``<task_queue>-N`` when ``separate_queues``)."""
    from temporalio.client import Client

    async def main() -> T:
        client = await Client.connect(temporal_address)
        queue = f"q-{uuid.uuid4().hex[:8]}"
        async with AsyncExitStack() as stack:
            for i, rt in enumerate(runtimes, 1):
                worker = ClusterWorker(
                    client,
                    rt,
                    redis_url=redis_url,
                    deployment=deployment,
                    name=f"w{i}",
                    task_queue=f"{queue}-{i}" if separate_queues else queue,
                )
                await stack.enter_async_context(worker)
            return await scenario(client, queue)

    return asyncio.run(main())


async def until(probe: Callable[[], Awaitable[Any]], what: str, timeout: float = 30.0) -> Any:
    """Await ``probe()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(0.05)
    msg = f"timed out after {timeout:g} s waiting for {what}"
    raise AssertionError(msg)


def wait_for(probe: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Call ``probe()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    msg = f"timed out after {timeout:g} s waiting for {what}"
    raise AssertionError(msg)

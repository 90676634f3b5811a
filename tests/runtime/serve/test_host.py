"""The server's model host in-process: background loading, and a bounded batch of model uses."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from coreason_runtime import ConfigurationError, TierUnavailableError
from coreason_runtime.serve import create_app
from coreason_runtime.serve._host import ModelHost
from coreason_runtime.tensor import ScriptedTier
from fastapi.testclient import TestClient


def _run_jobs(batch: int, n: int) -> tuple[list[int], list[int], int]:
    """Run ``n`` sleeping jobs on a host of ``batch``: results, finishing order, peak."""
    host = ModelHost(ScriptedTier("local", []), "m", batch=batch)
    active = 0
    peak = 0
    order: list[int] = []
    lock = threading.Lock()

    def job(i: int) -> int:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1
            order.append(i)
        return i

    async def main() -> list[int]:
        return list(await asyncio.gather(*(host.run(job, i) for i in range(n))))

    try:
        results = asyncio.run(main())
    finally:
        host.close()
    return results, order, peak


def test_jobs_run_one_at_a_time_in_arrival_order_with_batch_one() -> None:
    results, order, peak = _run_jobs(1, 5)
    assert results == [0, 1, 2, 3, 4]
    assert order == [0, 1, 2, 3, 4]
    assert peak == 1


def test_up_to_batch_jobs_run_at_once_and_the_rest_queue() -> None:
    results, _, peak = _run_jobs(3, 7)
    assert results == list(range(7))
    assert peak == 3


def test_a_batch_below_one_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="batch"):
        ModelHost(ScriptedTier("local", []), "m", batch=0)


def test_health_says_loading_until_the_loader_returns_then_ok() -> None:
    release = threading.Event()

    def loader() -> ScriptedTier:
        release.wait(30)
        return ScriptedTier("local", ["{}"])

    app = create_app(loader, model_name="slow-model")
    with TestClient(app) as c:
        first = c.get("/health")
        refused = c.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
        release.set()
        app.state.host.wait_ready(30)
        second = c.get("/health")
    assert (first.status_code, first.json()["status"]) == (503, "loading")
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "model_loading"
    assert refused.headers["retry-after"] == "1"
    assert (second.status_code, second.json()["status"]) == (200, "ok")


def test_a_failed_load_is_reported_by_health_and_requests() -> None:
    def loader() -> ScriptedTier:
        msg = "no such model"
        raise TierUnavailableError(msg)

    app = create_app(loader, model_name="missing")
    with TestClient(app) as c:
        app.state.host.wait_ready(30)
        health = c.get("/health").json()
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert health["status"] == "error"
    assert "no such model" in health["error"]
    assert r.status_code == 503


def test_token_from_the_environment_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COREASON_SERVE_TOKEN", "env-token")
    app = create_app(ScriptedTier("local", []), model_name="m")
    with TestClient(app) as c:
        refused = c.get("/v1/models")
        allowed = c.get("/v1/models", headers={"Authorization": "Bearer env-token"})
    assert refused.status_code == 401
    assert allowed.status_code == 200


def test_the_backend_of_a_host_still_loading_is_a_typed_unavailable_error() -> None:
    host = ModelHost(lambda: ScriptedTier("local", []), "m")  # a loader, not yet started
    try:
        with pytest.raises(TierUnavailableError, match="still loading"):
            host.backend  # noqa: B018 - the property access is what raises
    finally:
        host.close()


class _ClosableBackend:
    """A backend (the server's seam to its model) that only records being closed."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def compile(self, json_schema: object) -> object:
        raise NotImplementedError

    def generate(self, job: object, meter: object) -> object:
        raise NotImplementedError

    def close(self) -> None:
        self.closed.set()


def test_a_model_that_finishes_loading_after_shutdown_is_still_released() -> None:
    release = threading.Event()
    backend = _ClosableBackend()

    def loader() -> _ClosableBackend:
        release.wait(30)
        return backend

    host = ModelHost(loader, "m")
    host.start()
    host.close()  # the server shuts down mid-load
    release.set()
    assert backend.closed.wait(10)
    with pytest.raises(TierUnavailableError, match="shut down"):
        host.backend  # noqa: B018 - the property access is what raises


def test_close_waits_for_the_running_job_before_releasing_the_model() -> None:
    backend = _ClosableBackend()
    host = ModelHost(backend, "m")
    started, finish = threading.Event(), threading.Event()
    seen: list[bool] = []

    def job() -> None:
        started.set()
        finish.wait(30)
        seen.append(backend.closed.is_set())  # the model must still be open here

    async def main() -> None:
        running = asyncio.ensure_future(host.run(job))
        await asyncio.to_thread(started.wait, 30)
        closer = asyncio.ensure_future(asyncio.to_thread(host.close))
        await asyncio.sleep(0.05)
        finish.set()
        await running
        await closer

    asyncio.run(main())
    assert seen == [False]
    assert backend.closed.is_set()

"""The Coordinator: one per process, owning the runtime thread, the bus, ledgers and models."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from coreason_runtime._config import RuntimeConfig
from coreason_runtime._controls import Controls
from coreason_runtime._events import EventBus, EventType
from coreason_runtime._exceptions import ConfigurationError

if TYPE_CHECKING:
    from coreason_runtime.bandit import BanditLab
    from coreason_runtime.budget import BudgetCage
    from coreason_runtime.cache import SubgoalCache
    from coreason_runtime.decode import BlockStore, DecodeEngine
    from coreason_runtime.plan import PlanRunner
    from coreason_runtime.route import TierMatrix
    from coreason_runtime.sched import Scheduler
    from coreason_runtime.sim import WhatIfGate
    from coreason_runtime.tensor import TensorRouter
    from coreason_runtime.txn import ToolTransactions

__all__ = ["Coordinator"]

logger = logging.getLogger("coreason_runtime")
T = TypeVar("T")


class Coordinator:
    """The runtime of one process (in a notebook: of one kernel).

    It owns a daemon thread running an asyncio event loop (``loop``), the :class:`EventBus`
    (``bus``), the workflow controls (``controls``: pause, resume, preempt, abort), the budget
    ledgers (``budgets``), the router and its tiers (``router``), and the engines of the
    other mechanisms, each created on first use so that ``import`` and construction stay
    cheap.

    Parameters
    ----------
    config:
        Settings; defaults read ``$COREASON_HOME`` and ``COREASON_*`` variables.
    """

    _default: Coordinator | None = None
    _default_lock = threading.Lock()

    def __init__(self, config: RuntimeConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = RuntimeConfig(**overrides)
        elif overrides:
            msg = "pass either a RuntimeConfig or keyword overrides, not both"
            raise ConfigurationError(msg)
        self.config = config
        self.home = config.home
        self.home.mkdir(parents=True, exist_ok=True)
        self.bus = EventBus()
        self.controls = Controls(self.bus)
        """Pause, resume, preempt and abort any workflow's work, from any thread."""
        self._lock = threading.RLock()
        self._engines: dict[str, Any] = {}
        self._closed = False
        self._loop_ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="coreason-runtime", daemon=True)
        self._thread.start()
        self._loop_ready.wait()
        self.bus.emit(EventType.RUNTIME_STARTED, source="coordinator", home=str(self.home))

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def default(cls) -> Coordinator:
        """The process-wide runtime on the embedded default (local model, SQLite, no keys)."""
        with cls._default_lock:
            if cls._default is None or cls._default._closed:
                cls._default = cls()
                atexit.register(cls._default.close)
            return cls._default

    # --- the runtime thread ------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._loop_ready.set)
        self.loop.run_forever()
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def submit(self, coro: Awaitable[T]) -> concurrent.futures.Future[T]:
        """Run a coroutine on the runtime thread; returns a thread-safe future."""
        self._check_open()
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def call(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Run a blocking function on the runtime thread's executor."""
        self._check_open()

        async def _run() -> T:
            return await self.loop.run_in_executor(None, fn, *args)

        return self.submit(_run())

    @property
    def in_runtime_thread(self) -> bool:
        return threading.current_thread() is self._thread

    # --- engines, created on first use -------------------------------------------------------

    def engine(self, name: str, factory: Callable[[Coordinator], T]) -> T:
        """The engine registered under ``name``, built by ``factory(self)`` on first use."""
        self._check_open()
        with self._lock:
            if name not in self._engines:
                self._engines[name] = factory(self)
            return self._engines[name]  # type: ignore[no-any-return]

    @property
    def budgets(self) -> BudgetCage:
        """Per-workflow ceilings and ledgers (``set``, ``spent``, ``reset`` ...)."""
        from coreason_runtime.budget import BudgetCage

        return self.engine("budgets", BudgetCage.for_runtime)

    @property
    def tiers(self) -> TierMatrix:
        """The tier matrix: every tier the router may use, its weights, price and capability
        (``$COREASON_HOME/tiers.toml``, ``COREASON_TIER_*``, or ``rt.tiers.add`` in code)."""
        from coreason_runtime.route import TierMatrix

        return self.engine("tiers", TierMatrix.for_runtime)

    @property
    def router(self) -> TensorRouter:
        """The TensorRouter: local tier, oracle tier, then the human."""
        from coreason_runtime.tensor import TensorRouter

        return self.engine("router", TensorRouter.for_runtime)

    @property
    def plans(self) -> PlanRunner:
        """Planners propose subgoal DAGs; this validates, gates, runs and learns from them."""
        from coreason_runtime.plan import PlanRunner

        return self.engine("plans", PlanRunner.for_runtime)

    @property
    def scheduler(self) -> Scheduler:
        """The critical-path scheduler: DAGs of tasks, physical preemption, budgets."""
        from coreason_runtime.sched import Scheduler

        return self.engine("scheduler", Scheduler.for_runtime)

    @property
    def txn(self) -> ToolTransactions:
        """Two-phase tool calls with a durable audit log (recovers a crashed run on first use)."""
        from coreason_runtime.txn import ToolTransactions

        return self.engine("txn", ToolTransactions.for_runtime)

    @property
    def cache(self) -> SubgoalCache:
        """The subgoal cache on canonical forms, consulted by the router before any tier."""
        from coreason_runtime.cache import SubgoalCache

        return self.engine("cache", SubgoalCache.for_runtime)

    @property
    def decode(self) -> DecodeEngine:
        """Decode sessions over an explicit KV cache: pause, inject, repair, thunks."""
        from coreason_runtime.decode import DecodeEngine

        return self.engine("decode", DecodeEngine.for_runtime)

    @property
    def kv(self) -> BlockStore:
        """KV blocks of the local model in tiers: GPU, RAM, ``$COREASON_HOME/kv`` on disk."""
        from coreason_runtime.decode import BlockStore

        return self.engine("kv", BlockStore.for_runtime)

    @property
    def whatif(self) -> WhatIfGate:
        """The what-if gate: an expensive escalation runs only if a dry run predicts it pays."""
        from coreason_runtime.sim import WhatIfGate

        return self.engine("whatif", WhatIfGate.for_runtime)

    @property
    def bandit(self) -> BanditLab:
        """Growth budgets for growing RBF networks, and bandit runs under them."""
        from coreason_runtime.bandit import BanditLab

        return self.engine("bandit", BanditLab.for_runtime)

    # --- shutdown ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            msg = "this Coordinator is closed; use Coordinator.default() for a fresh one"
            raise ConfigurationError(msg)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop the engines and the runtime thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            engines = list(self._engines.values())
            self._engines.clear()
        for engine in reversed(engines):
            closer = getattr(engine, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception:  # shutdown continues whatever one engine does
                    logger.exception("closing %r failed", engine)
        self.bus.emit(EventType.RUNTIME_STOPPED, source="coordinator")
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_runtime_thread:
            self._thread.join(timeout=10)

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<Coordinator home={str(self.home)!r} model={self.config.model!r} {state}>"

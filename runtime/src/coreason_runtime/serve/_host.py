"""The one model every client shares: loaded in the background, its requests decoded in a batch."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from coreason_runtime._controls import Controls, Ticket
from coreason_runtime._exceptions import ConfigurationError, TierUnavailableError
from coreason_runtime.serve._backend import Backend, adapt
from coreason_runtime.serve._limits import check_queue
from coreason_runtime.tensor._types import BaseTier, UnmeteredMeter

__all__ = ["Job", "ModelHost"]

logger = logging.getLogger("coreason_runtime.serve")
T = TypeVar("T")

State = Literal["loading", "ok", "error"]


_job_ids = itertools.count(1)


@dataclass
class Job:
    """One served request, decoded on a model thread under its own workflow controls.

    :meth:`cancel` (the client hung up) aborts the job's workflow: its decode stops at the
    next decoder-layer boundary, or before it starts if it is still queued.
    """

    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    seed: int | None
    schema: Any = None
    deadline: float | None = None  # monotonic; set at arrival, so queueing counts
    on_text: Callable[[str], None] | None = None
    controls: Controls = field(default_factory=Controls)
    workflow_id: str = field(default_factory=lambda: f"serve-{next(_job_ids)}")
    cancelled: threading.Event = field(default_factory=threading.Event)
    ticket: Ticket = field(init=False)
    # counts the job's tokens as they are decoded (streamed usage reads it)
    meter: UnmeteredMeter = field(init=False)

    def __post_init__(self) -> None:
        # opened now, so a cancel that comes while the job is queued already reaches it
        self.ticket = self.controls.open(self.workflow_id)
        self.meter = UnmeteredMeter(self.max_tokens)

    def limit_output(self, max_tokens: int) -> None:
        """Decode at most ``max_tokens`` (what fits in the model's context beside the prompt)."""
        self.max_tokens = max_tokens
        self.meter = UnmeteredMeter(max_tokens)

    def cancel(self) -> None:
        """Stop the job: nobody will read its answer. Idempotent."""
        if not self.cancelled.is_set():
            self.cancelled.set()
            self.controls.abort(self.workflow_id, reason="client disconnected")


class ModelHost:
    """Owns the backend: loads it off the event loop and bounds how many requests use it.

    ``source`` is a ready tier or a zero-argument loader returning one; a loader runs on a
    background thread so ``/health`` answers ``"loading"`` meanwhile. Up to ``batch``
    requests run at once, each waiting on its decode session while the decode engine steps
    them together (continuous batching: one forward pass per token for all of them); the
    rest queue in arrival order. ``batch=1`` serves one request at a time.
    """

    def __init__(
        self, source: Any, model_name: str, *, max_queue: int = 16, batch: int = 8
    ) -> None:
        if batch < 1:
            msg = f"batch must be at least 1, got {batch}"
            raise ConfigurationError(msg)
        self.model_name = model_name
        self.max_queue = max_queue
        self.batch = batch
        self._seconds_per_request = 1.0  # a running mean of model time per request
        self._source = source
        self._backend: Backend | None = None
        self._error: str | None = None
        self._ready = threading.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=batch, thread_name_prefix="coreason-serve-model"
        )
        self._waiting = 0
        self.served = 0
        self.cancelled = 0
        self._count_lock = threading.Lock()
        self._loader: threading.Thread | None = None
        self._closed = False
        if isinstance(source, BaseTier) or not callable(source):  # a tier or a backend
            self._backend = adapt(source)
            self._ready.set()

    # --- loading -----------------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading in the background (no-op if already loaded or loading)."""
        if self._ready.is_set() or self._loader is not None:
            return
        self._loader = threading.Thread(target=self._load, name="coreason-serve-load", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        try:
            backend = adapt(self._source())
        except Exception as e:  # reported by /health and every request, never raised away
            logger.exception("loading model %r failed", self.model_name)
            self._error = f"{type(e).__name__}: {e}"
        else:
            with self._count_lock:
                closed = self._closed
                if not closed:
                    self._backend = backend
            if closed:  # the server shut down while the model loaded: nobody will close it
                backend.close()
        finally:
            self._ready.set()

    @property
    def state(self) -> State:
        if not self._ready.is_set():
            return "loading"
        return "ok" if self._backend is not None else "error"

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def waiting(self) -> int:
        """Requests queued for or running on the model."""
        return self._waiting

    def record(self, *, cancelled: bool) -> None:
        """Count a finished request (``cancelled``: its client hung up mid-way)."""
        with self._count_lock:
            if cancelled:
                self.cancelled += 1
            else:
                self.served += 1

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            if self._closed:
                msg = f"model {self.model_name!r} has been shut down"
            elif self.state == "loading":
                msg = f"model {self.model_name!r} is still loading"
            else:
                msg = f"model {self.model_name!r} failed to load: {self._error}"
            raise TierUnavailableError(msg, tier="local")
        return self._backend

    # --- model work ------------------------------------------------------------------------

    def check_capacity(self) -> None:
        """Raise :class:`ServerBusyError` if the queue is full now (nothing is taken)."""
        with self._count_lock:
            check_queue(self._waiting, self.max_queue, self._seconds_per_request / self.batch)

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args)`` for a model thread; its future.

        Raises
        ------
        ServerBusyError
            ``max_queue`` requests are already queued or running (nothing was queued).
        """
        with self._count_lock:
            check_queue(self._waiting, self.max_queue, self._seconds_per_request / self.batch)
            self._waiting += 1
        try:
            future = self._executor.submit(self._timed, fn, *args)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _: self._release())
        return asyncio.wrap_future(future)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on a model thread, once fewer than ``batch`` requests run."""
        return await self.submit(fn, *args)

    def _timed(self, fn: Callable[..., T], *args: Any) -> T:
        started = time.monotonic()
        try:
            return fn(*args)
        finally:
            spent = time.monotonic() - started
            with self._count_lock:
                self._seconds_per_request += 0.2 * (spent - self._seconds_per_request)

    def _release(self) -> None:
        with self._count_lock:
            self._waiting -= 1

    def close(self) -> None:
        """Drop queued requests, wait for those decoding, then release the model.

        A model still loading is released by the loader once it is done.
        """
        with self._count_lock:
            self._closed = True
            backend, self._backend = self._backend, None
        # never free the model under a running decode (clients are gone by shutdown, so it
        # stops at its next token)
        self._executor.shutdown(wait=True, cancel_futures=True)
        if backend is not None:
            backend.close()

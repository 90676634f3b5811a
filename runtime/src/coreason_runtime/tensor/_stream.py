"""Streaming a structured answer: the partial value as tokens arrive, then the validated one.

Every tier publishes its text as it grows (``tokens.batch`` events, :class:`TokensBatch`). A
:class:`PartialValues` collector subscribes to them for *one* request: the request runs inside
the collector's :meth:`~PartialValues.scope`, and since the bus calls subscribers on the
publisher's thread, a context variable tells the collector's handler which events are its own
request's (other requests in the same workflow, on other threads, are ignored). The growing
JSON is parsed with pydantic-core's partial mode, so ``{"expression": "x**3", "deriv`` is
already ``{"expression": "x**3"}``. A retry or an escalation starts a new attempt: the text
starts over.

:meth:`TensorRouter.stream` (``rt.router.stream(...)``) wraps this in an iterator for scripts;
the notebook's ``%%coreason ask`` renders the same partial values in its output.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic_core import from_json

from coreason_runtime._events import Event, EventBus, EventType
from coreason_runtime.events import AttemptStarted, TokensBatch

if TYPE_CHECKING:
    from coreason_runtime.tensor._router import TensorRouter
    from coreason_runtime.tensor._types import Result

__all__ = ["Partial", "PartialStream", "PartialValues", "parse_partial"]

_CURRENT: contextvars.ContextVar[PartialValues | None] = contextvars.ContextVar(
    "coreason_partial_values", default=None
)
_NOTHING = object()


def parse_partial(text: str) -> Any:
    """The value of a JSON prefix (complete fields, a string cut mid-way kept as far as it
    goes); ``None`` while nothing parses yet."""
    text = text.strip()
    if not text:
        return None
    try:
        return from_json(text, allow_partial="trailing-strings")
    except ValueError:
        return None


@dataclass(frozen=True)
class Partial:
    """One step of a streamed answer.

    ``value`` is the parsed JSON so far (a dict for an object schema), or, when ``final``, the
    validated value (a model instance for a pydantic schema) with its :class:`Result` in
    ``result``. ``text`` is the attempt's raw text so far, ``tokens_out`` its tokens.
    """

    value: Any
    text: str
    tier: str | None
    attempt: int
    tokens_out: int
    elapsed_s: float
    final: bool = False
    result: Result[Any] | None = None


class PartialValues:
    """Collects the partial values of the request run inside :meth:`scope`.

    Parameters
    ----------
    bus:
        The runtime's event bus, where the tiers publish ``tokens.batch``.
    on_partial:
        Called on the request's thread with each new :class:`Partial`; it must be cheap (put it
        on a queue).
    """

    def __init__(self, bus: EventBus, on_partial: Callable[[Partial], None]) -> None:
        self._bus = bus
        self._on_partial = on_partial
        self._text = ""
        self._tier: str | None = None
        self._attempt = 0
        self._tokens = 0
        self._last: Any = _NOTHING
        self.started = time.perf_counter()
        self.first_partial_s: float | None = None

    @contextmanager
    def scope(self) -> Iterator[PartialValues]:
        """Run the request inside this block, on this thread: its tokens come here."""
        token = _CURRENT.set(self)
        sub = self._bus.subscribe(self._on_event, [EventType.TOKENS, EventType.ATTEMPT_STARTED])
        try:
            yield self
        finally:
            sub.unsubscribe()
            _CURRENT.reset(token)

    def _on_event(self, event: Event) -> None:
        if _CURRENT.get() is not self:
            return  # another request's tokens (another thread or context)
        data = event.data
        if isinstance(data, AttemptStarted):
            self._text, self._tier, self._tokens = "", data.tier, 0
            self._attempt += 1
            self._last = _NOTHING
        elif isinstance(data, TokensBatch):
            self._text += data.delta
            self._tokens = data.total_out
            self._tier = data.tier or self._tier
            value = parse_partial(self._text)
            if value in (None, {}, [], "") or value == self._last:
                return  # nothing to show yet, or nothing new
            self._last = value
            if self.first_partial_s is None:
                self.first_partial_s = time.perf_counter() - self.started
            self._on_partial(self._partial(value))

    def _partial(self, value: Any) -> Partial:
        return Partial(
            value=value,
            text=self._text,
            tier=self._tier,
            attempt=self._attempt,
            tokens_out=self._tokens,
            elapsed_s=time.perf_counter() - self.started,
        )

    def final(self, result: Result[Any]) -> Partial:
        """The last step: the validated value of ``result``."""
        return Partial(
            value=result.value,
            text=result.text,
            tier=result.tier,
            attempt=max(self._attempt, 1),
            tokens_out=result.tokens_out,
            elapsed_s=time.perf_counter() - self.started,
            final=True,
            result=result,
        )


class PartialStream:
    """``rt.router.stream(...)``: iterate the partial values of one request, then its answer.

    The request runs on a thread of its own once iteration starts; every item is a
    :class:`Partial`, the last one ``final`` with the validated value and the :class:`Result`
    (also in :attr:`result` afterwards). The request's error is raised from the iteration.
    Leaving the loop early (``break``, an exception, Ctrl-C) aborts the workflow's running work
    through ``rt.controls`` and waits for it to settle, so nothing stays reserved.
    """

    def __init__(
        self, router: TensorRouter, schema: Any, prompt: str, kwargs: dict[str, Any]
    ) -> None:
        self._router = router
        self._schema = schema
        self._prompt = prompt
        self._kwargs = kwargs
        self._queue: queue.Queue[Partial | BaseException] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.result: Result[Any] | None = None
        self.first_partial_s: float | None = None

    @property
    def workflow_id(self) -> str:
        from coreason_runtime.budget import DEFAULT_WORKFLOW

        return str(self._kwargs.get("workflow_id") or DEFAULT_WORKFLOW)

    def _run(self) -> None:
        collector = PartialValues(self._router.bus, self._queue.put)
        try:
            with collector.scope():
                result = self._router.generate(self._schema, self._prompt, **self._kwargs)
        except BaseException as e:  # handed to the iterating thread, raised there
            self._queue.put(e)
        else:
            self.first_partial_s = collector.first_partial_s
            self._queue.put(collector.final(result))

    def __iter__(self) -> Iterator[Partial]:
        if self._thread is not None:
            msg = "a PartialStream can be iterated once"
            raise RuntimeError(msg)
        self._thread = threading.Thread(target=self._run, name="coreason-stream", daemon=True)
        self._thread.start()
        finished = False
        try:
            while True:
                item = self._queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.final:
                    finished = True
                    self.result = item.result
                    yield item
                    return
                yield item
        finally:
            if not finished:
                self._stop()

    def _stop(self) -> None:
        """The consumer left early: abort the request and wait until it has settled."""
        assert self._thread is not None
        if self._thread.is_alive():
            self._router.controls.abort(self.workflow_id, reason="stream closed")
            self._thread.join()

    def __repr__(self) -> str:
        state = "done" if self.result is not None else "open"
        return f"<PartialStream workflow={self.workflow_id!r} {state}>"

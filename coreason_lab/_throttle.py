"""Between the event bus and the screen: batches events, at most N deliveries a second.

A bus handler must be cheap (it runs on the publisher's thread, often the decode loop), so
:meth:`Throttle.offer` only appends to a bounded deque. A single daemon thread delivers the
pending batch to the sinks no more often than ``max_per_second``. When the throttle is paused
or no view is attached, events are dropped and counted instead of buffered, so a closed tab
leaks nothing and costs the kernel almost nothing.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable

from coreason_runtime import Event, EventBus, EventType, Subscription

__all__ = ["Sink", "Throttle"]

logger = logging.getLogger("coreason_lab.throttle")

Sink = Callable[[list[Event]], None]


class Throttle:
    """Batch events from ``bus`` and hand them to sinks at most ``max_per_second`` times.

    Parameters
    ----------
    bus:
        The runtime's event bus.
    types:
        Event types or areas to subscribe to (``None``: everything).
    max_per_second:
        Upper bound on deliveries per second (> 0).
    max_buffer:
        Events kept between deliveries; older ones are dropped (and counted) beyond it.
    clock:
        Monotonic clock; injectable so tests can drive :meth:`pump` deterministically.
    start:
        Start the delivery thread. Tests pass ``False`` and call :meth:`pump` themselves.
    """

    def __init__(
        self,
        bus: EventBus,
        types: Iterable[EventType | str] | None = None,
        *,
        max_per_second: float = 10.0,
        max_buffer: int = 5000,
        clock: Callable[[], float] = time.monotonic,
        start: bool = True,
    ) -> None:
        if not max_per_second > 0:
            msg = f"max_per_second must be positive, got {max_per_second!r}"
            raise ValueError(msg)
        self.max_per_second = float(max_per_second)
        self._clock = clock
        self._lock = threading.Lock()
        self._buffer: collections.deque[Event] = collections.deque(maxlen=max_buffer)
        self._sinks: list[Sink] = []
        self._wake = threading.Event()
        self._closed = False
        self._paused = False
        self._last = -float("inf")
        self.delivered_batches = 0
        self.delivered_events = 0
        self.dropped = 0
        self._sub: Subscription = bus.subscribe(self.offer, types)
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(
                target=self._loop, name="coreason-throttle", daemon=True
            )
            self._thread.start()

    # --- the publisher side (cheap) -----------------------------------------------------------

    def offer(self, event: Event) -> None:
        """Buffer one event, or drop it if paused or nothing is attached."""
        if self._paused or not self._sinks or self._closed:
            self.dropped += 1
            return
        with self._lock:
            if len(self._buffer) == self._buffer.maxlen:
                self.dropped += 1
            self._buffer.append(event)
        self._wake.set()

    # --- views --------------------------------------------------------------------------------

    def attach(self, sink: Sink) -> None:
        """Deliver batches to ``sink`` from now on."""
        with self._lock:
            if sink not in self._sinks:
                self._sinks.append(sink)

    def detach(self, sink: Sink) -> None:
        """Stop delivering to ``sink``; with no sink left, events are dropped. Idempotent."""
        with self._lock:
            if sink in self._sinks:
                self._sinks.remove(sink)
            if not self._sinks:
                self.dropped += len(self._buffer)
                self._buffer.clear()

    @property
    def attached(self) -> int:
        return len(self._sinks)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    # --- controls -----------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Drop events until :meth:`resume` (the runtime keeps going; only the view freezes)."""
        self._paused = True
        with self._lock:
            self.dropped += len(self._buffer)
            self._buffer.clear()

    def resume(self) -> None:
        self._paused = False

    # --- delivery -----------------------------------------------------------------------------

    def pump(self, now: float | None = None) -> int:
        """Deliver the pending batch if the rate allows; returns how many events went out."""
        now = self._clock() if now is None else now
        if now - self._last < 1.0 / self.max_per_second:
            return 0
        with self._lock:
            if not self._buffer:
                return 0
            batch = list(self._buffer)
            self._buffer.clear()
            sinks = list(self._sinks)
        self._last = now
        for sink in sinks:
            try:
                sink(batch)
            except Exception:  # a broken view must not stop the others
                logger.exception("dashboard sink %r failed", sink)
        self.delivered_batches += 1
        self.delivered_events += len(batch)
        return len(batch)

    def flush(self) -> int:
        """Deliver whatever is pending now, ignoring the rate (end of a cell, tests)."""
        self._last = -float("inf")
        return self.pump()

    def _loop(self) -> None:
        interval = 1.0 / self.max_per_second
        while not self._closed:
            self._wake.wait()
            if self._closed:
                return
            self._wake.clear()
            wait = self._last + interval - self._clock()
            if wait > 0:
                time.sleep(wait)
            self.pump()

    def close(self) -> None:
        """Unsubscribe, drop the buffer, stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._sub.unsubscribe()
        with self._lock:
            self._sinks.clear()
            self._buffer.clear()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Throttle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "paused" if self._paused else "live"
        return (
            f"<Throttle {state} ≤{self.max_per_second:g}/s attached={self.attached} "
            f"delivered={self.delivered_events} dropped={self.dropped}>"
        )

"""A foreground request from a cell: its answer growing in place, and the kernel's interrupt.

``%%coreason ask`` and ``%coreason run`` hand their work to the runtime thread and wait here on
the cell's thread. While waiting, a :class:`StreamView` redraws the partial answer (at most
``max_per_second`` times a second) from the :class:`~coreason_runtime.tensor.PartialValues`
the request publishes. Jupyter's interrupt (SIGINT, a ``KeyboardInterrupt`` on this thread)
sends an abort to ``rt.controls``: the decode stops at its next decoder-layer boundary, the
attempt settles exactly what ran, and the cell ends with one line saying how many tokens ran
and what they cost (the note on the ``KeyboardInterrupt``, shown by :mod:`coreason_lab._errors`).
"""

from __future__ import annotations

import concurrent.futures
import html
import json
import queue
import time
from collections.abc import Callable
from typing import Any

from coreason_runtime import Controls, CoreasonError, UnknownWorkflowError
from coreason_runtime.tensor import Partial, PartialValues, add_interrupt_note
from IPython.display import HTML, display

from coreason_lab._errors import user_traceback

__all__ = [
    "StreamView",
    "describe_ask",
    "describe_run",
    "run_request",
    "wait_for",
]

_SETTLE_TIMEOUT_S = 30.0


def _value_text(value: Any) -> str:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


class StreamView:
    """The partial answer of one foreground ask, drawn in one output updated in place.

    Parameters
    ----------
    name:
        The variable the answer lands in (shown in the header).
    max_per_second:
        Redraws per second at most (the magics' ``max_updates_per_second``).
    """

    def __init__(self, name: str, max_per_second: float = 10.0) -> None:
        self.name = name
        self._min_gap = 1.0 / max_per_second
        self._queue: queue.Queue[Partial] = queue.Queue()
        self._latest: Partial | None = None
        self._drawn: Partial | None = None
        self._last_draw = 0.0
        self._handle: Any = None
        self.partials = 0
        self.redraws = 0

    def collector(self, bus: Any) -> PartialValues:
        """The collector to run the request under (``with view.collector(bus).scope(): ...``)."""
        return PartialValues(bus, self._queue.put)

    def pump(self, *, force: bool = False) -> None:
        """Take what arrived; redraw if the rate allows (or ``force``)."""
        while True:
            try:
                self._latest = self._queue.get_nowait()
                self.partials += 1
            except queue.Empty:
                break
        now = time.monotonic()
        if self._latest is None or self._latest is self._drawn:
            return
        if not force and now - self._last_draw < self._min_gap:
            return
        self._draw(self._latest)
        self._drawn, self._last_draw = self._latest, now

    def _draw(self, p: Partial) -> None:
        header = (
            f"streaming → {self.name} · {p.tier or '?'} #{p.attempt} · {p.tokens_out} tokens · "
            f"{p.elapsed_s:.1f} s"
        )
        body = _value_text(p.value)
        obj = HTML(
            f"<div class='coreason-stream'><small>{html.escape(header)}</small>"
            f"<pre>{html.escape(body)}</pre></div>"
        )
        self.redraws += 1
        if self._handle is None:
            self._handle = display(obj, display_id=True)
        else:
            self._handle.update(obj)

    def finish(self, result: Any) -> None:
        """The request answered: one line saying how the answer streamed."""
        if self._handle is None:
            return  # nothing streamed (a replayed or cached answer): nothing to replace
        self.close(
            f"streamed {self.partials} partial value(s) of {result.tokens_out} tokens; "
            f"the validated answer is below"
        )

    def close(self, line: str) -> None:
        """Replace the partial answer by one line (the final answer is the cell's result)."""
        self.pump(force=True)
        if self._handle is not None:
            self._handle.update(HTML(f"<small class='coreason-stream'>{html.escape(line)}</small>"))


def describe_ask(future: concurrent.futures.Future[Any], workflow: str) -> str:
    """What an interrupted ask ran: tokens and C of its attempts (all settled)."""
    error = future.exception() if future.done() else None
    attempts = error.attempts if isinstance(error, CoreasonError) else []
    if future.done() and error is None:
        attempts = future.result().attempts
    tokens = sum(a.tokens_out for a in attempts)
    cost = sum(a.cost for a in attempts)
    return (
        f"interrupted after {tokens} tokens; C {cost:g} charged to workflow {workflow!r}, "
        "nothing left reserved"
    )


def _spent(budgets: Any, workflow: str) -> float:
    try:
        return float(budgets.get(workflow).spent)
    except UnknownWorkflowError:
        return 0.0


def describe_run(budgets: Any, workflow: str) -> Callable[[concurrent.futures.Future[Any]], str]:
    """What an interrupted ``%coreason run`` cost while it ran (its ledger, before and after)."""
    before = _spent(budgets, workflow)

    def describe(future: concurrent.futures.Future[Any]) -> str:
        return (
            f"the run of workflow {workflow!r} was aborted; "
            f"C {_spent(budgets, workflow) - before:g} charged while it ran, nothing left reserved"
        )

    return describe


def run_request(
    router: Any, schema: Any, prompt: str, kwargs: dict[str, Any], view: StreamView | None
) -> Any:
    """``router.generate`` on this thread, its partial values going to ``view`` if given."""
    if view is None:
        return router.generate(schema, prompt, **kwargs)
    with view.collector(router.bus).scope():
        return router.generate(schema, prompt, **kwargs)


def wait_for(
    future: concurrent.futures.Future[Any],
    controls: Controls,
    workflow: str,
    describe: Callable[[concurrent.futures.Future[Any]], str],
    view: StreamView | None = None,
) -> Any:
    """The future's result, waited for on the cell's thread; Ctrl-C aborts the work cleanly.

    On an interrupt the workflow's running work is aborted through ``controls`` and waited for
    (it settles its ledger), then the ``KeyboardInterrupt`` goes on with a note from
    ``describe``. A plain Python error of the user's own code (a step's body) is raised with
    the frames of coreason, futures and asyncio taken out of its traceback.
    """
    __tracebackhide__ = True
    slice_s = 0.05 if view is not None else 0.2
    try:
        while not future.done():
            concurrent.futures.wait([future], timeout=slice_s)
            if view is not None:
                view.pump()
    except KeyboardInterrupt as interrupt:
        controls.abort(workflow, reason="interrupted")
        concurrent.futures.wait([future], timeout=_SETTLE_TIMEOUT_S)
        # a run's future may end before a step's request in another thread has settled
        controls.wait_stopped(workflow, timeout=_SETTLE_TIMEOUT_S)
        text = describe(future)
        if view is not None:
            view.close(text)
        add_interrupt_note(interrupt, text)
        raise
    try:
        result = future.result()
    except CoreasonError as e:
        if view is not None:
            view.close(f"no validated answer: {type(e).__name__} (below)")
        raise
    except Exception as e:
        raise e.with_traceback(user_traceback(e.__traceback__))  # noqa: B904  # its own error
    if view is not None:
        view.finish(result)
    return result

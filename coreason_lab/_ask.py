"""Requests from cells: resolving the schema, and handles for requests running in the background."""

from __future__ import annotations

import concurrent.futures
import html
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as W
from coreason_runtime import (
    Controls,
    CoreasonError,
    EpistemicYieldError,
    Event,
    WorkflowAbortedError,
)
from coreason_runtime.events import (
    AttemptFailed,
    AttemptFinished,
    AttemptStarted,
    WorkflowControlChanged,
)
from IPython.core.error import UsageError
from pydantic import BaseModel

from coreason_lab._args import suggest
from coreason_lab._display import ResultDisplay
from coreason_lab._throttle import Throttle

__all__ = ["AskHandle", "parse_verifiers", "resolve_schema", "split_schema_cell"]


# IPython's output history is a dict in every namespace, never a schema.
_HISTORY = frozenset({"Out", "_oh"})


def _schema_like(value: Any) -> bool:
    if isinstance(value, type):
        return issubclass(value, BaseModel)
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


def _schema_names(ns: Mapping[str, Any]) -> list[str]:
    return sorted(
        k for k, v in ns.items() if not k.startswith("_") and k not in _HISTORY and _schema_like(v)
    )


def resolve_schema(name: str, ns: Mapping[str, Any]) -> Any:
    """The pydantic model (or JSON schema dict) called ``name`` (dotted names allowed) in ``ns``.

    Raises
    ------
    UsageError
        If it is not defined (with the closest schema names) or not a schema.
    """
    head, *rest = name.split(".")
    if head not in ns:
        schemas = _schema_names(ns)
        hint = suggest(head, schemas) or suggest(head, [k for k in ns if not k.startswith("_")])
        known = f" Schemas in the namespace: {', '.join(schemas)}." if schemas else ""
        msg = f"%coreason ask: no schema named {name!r} in the namespace.{hint}{known}"
        raise UsageError(msg)
    value = ns[head]
    for part in rest:
        if not hasattr(value, part):
            msg = (
                f"%coreason ask: {'.'.join([head, *rest[: rest.index(part)]])} has no "
                f"attribute {part!r}"
            )
            raise UsageError(msg)
        value = getattr(value, part)
    if not _schema_like(value):
        msg = (
            f"%coreason ask: {name!r} is a {type(value).__name__}, not a pydantic model or a "
            "JSON schema dict; e.g. `class Answer(BaseModel): value: int`"
        )
        raise UsageError(msg)
    return value


def parse_verifiers(text: str | None, ns: Mapping[str, Any]) -> Any:
    """``--verify``'s verifiers: built-ins (``derivative(of=x**3, result=derivative)``) or
    callables of the namespace, comma-separated; ``None`` without the option.

    Raises
    ------
    UsageError
        The text names something that is not a verifier.
    """
    if text is None:
        return None
    from coreason_runtime.verify._spec import parse_verify

    try:
        return parse_verify(text, ns)
    except CoreasonError as e:
        msg = f"%%coreason ask {e} (quote the whole option: --verify '...')"
        raise UsageError(msg) from e


def split_schema_cell(cell: str) -> tuple[str | None, str]:
    """``(schema code, prompt)``: code above a line ``---``, the prompt below (or all prompt)."""
    lines = cell.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "---":
            return "\n".join(lines[:i]), "\n".join(lines[i + 1 :]).strip()
    return None, cell.strip()


class AskHandle:
    """A request running on the runtime thread; the cell that started it has returned.

    Its widget streams progress (attempts, tokens, C, control state). When the request
    finishes, the value lands in the namespace variable ``into``; if every tier failed, the
    Oracle Circuit form appears in the handle's output area instead. The control state is the
    last ``workflow.*`` event of its workflow (received unthrottled, so it is current as soon as
    an intent returns).
    """

    def __init__(
        self,
        future: concurrent.futures.Future[Any],
        *,
        workflow_id: str,
        schema_name: str,
        into: str,
        namespace: dict[str, Any],
        controls: Controls,
        bus: Any,
        open_circuit: Callable[[EpistemicYieldError, str], Any],
        max_per_second: float = 10.0,
    ) -> None:
        self.future = future
        self.workflow_id = workflow_id
        self.schema_name = schema_name
        self.into = into
        self.result_obj: Any = None
        self.error: BaseException | None = None
        self.form: Any = None
        self.started = time.time()
        self.finished: float | None = None
        self._finished = threading.Event()
        self._ns = namespace
        self._controls = controls
        self._open_circuit = open_circuit
        self._attempts = 0
        self._tier = ""
        self._cost = 0.0
        self._control: str = controls.state(workflow_id)
        self.progress = W.HTML()
        self.output = W.Output()
        self.widget = W.VBox([self.progress, self.output])
        self._control_sub = bus.subscribe(self._on_control, "workflow")
        self._throttle = Throttle(
            bus,
            ["attempt", "request", "budget", "tokens", "workflow"],
            max_per_second=max_per_second,
        )
        self._throttle.attach(self._on_events)
        self._render()
        future.add_done_callback(self._done)

    # --- state --------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """``running``, ``paused``, ``preempted``, ``done``, ``failed``, ``aborted``, or
        ``awaiting human``."""
        if not self._finished.is_set():
            return self._control if self._control in ("paused", "preempted") else "running"
        if self.result_obj is not None:
            return "done"
        if self.form is not None:
            return "awaiting human"
        if isinstance(self.error, WorkflowAbortedError):
            return "aborted"
        return "failed"

    @property
    def done(self) -> bool:
        return self.status in ("done", "failed", "aborted")

    @property
    def tokens_out(self) -> int:
        """Output tokens charged in this workflow so far (as the runtime's controls count)."""
        return self._controls.status(self.workflow_id).tokens_out

    def wait(self, timeout: float | None = None) -> str:
        """Block until the request finishes (or ``timeout``); returns :attr:`status`."""
        self._finished.wait(timeout)
        return self.status

    def result(self, timeout: float | None = None) -> Any:
        """The Result (the human's, once the Oracle Circuit was answered); raises its error."""
        self.wait(timeout)
        if self.result_obj is not None:
            return self.result_obj
        if self.form is not None and self.form.result is not None:
            return self.form.result
        if self.error is not None:
            raise self.error
        msg = f"request in workflow {self.workflow_id!r} has not finished"
        raise TimeoutError(msg)

    # --- intents ------------------------------------------------------------------------------

    def pause(self) -> None:
        self._controls.pause(self.workflow_id, reason="handle")

    def resume(self) -> None:
        self._controls.resume(self.workflow_id, reason="handle")

    def preempt(self) -> None:
        self._controls.preempt(self.workflow_id, reason="handle")

    def abort(self) -> None:
        self._controls.abort(self.workflow_id, reason="handle")

    # --- callbacks (runtime thread) -----------------------------------------------------------

    def _on_control(self, ev: Event) -> None:
        if ev.workflow_id == self.workflow_id and isinstance(ev.data, WorkflowControlChanged):
            self._control = ev.data.state

    def _on_events(self, batch: list[Event]) -> None:
        for ev in batch:
            if ev.workflow_id != self.workflow_id:
                continue
            p = ev.data
            if isinstance(p, AttemptStarted):
                self._attempts += 1
                self._tier = p.tier
            elif isinstance(p, (AttemptFinished, AttemptFailed)):
                self._cost += p.cost
        self._render()

    def _done(self, fut: concurrent.futures.Future[Any]) -> None:
        self.finished = time.time()
        try:
            self.result_obj = fut.result()
        except EpistemicYieldError as e:
            self.error = e
            self.form = self._open_circuit(e, self.into)
            self.output.append_display_data(self.form.widget)
        except BaseException as e:
            self.error = e
        else:
            self._ns[self.into] = self.result_obj.value
            self.output.append_display_data(ResultDisplay(self.result_obj, name=self.into))
        self._control_sub.unsubscribe()
        self._throttle.close()
        self._finished.set()
        self._render()

    def _render(self) -> None:
        state = self.status
        colour = {
            "running": "#1f77b4",
            "done": "#2ca02c",
            "paused": "#ff7f0e",
            "preempted": "#ff7f0e",
            "awaiting human": "#ff7f0e",
        }.get(state, "#d62728")
        elapsed = (self.finished or time.time()) - self.started
        err = (
            f" · {html.escape(type(self.error).__name__)}: {html.escape(str(self.error))}"
            if self.error is not None and self.form is None
            else ""
        )
        self.progress.value = (
            f"<span style='color:{colour}'>●</span> <b>{html.escape(state)}</b> · "
            f"{html.escape(self.schema_name)} → <code>{html.escape(self.into)}</code> · "
            f"workflow {html.escape(self.workflow_id)} · attempt {self._attempts} "
            f"{html.escape(self._tier)} · {self.tokens_out} tokens out · C {self._cost:g} · "
            f"{elapsed:.1f}s{err}"
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return (
            f"<AskHandle {self.schema_name}→{self.into} workflow={self.workflow_id!r} "
            f"{self.status}>"
        )

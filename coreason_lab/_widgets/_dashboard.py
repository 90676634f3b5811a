"""The dashboard: four views behind one throttle, plus buttons that send control intents."""

from __future__ import annotations

import contextlib
import html
import threading
import time
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
from coreason_runtime import Controls, Event

from coreason_lab._comm import honour_frontend_subshell
from coreason_lab._throttle import Throttle
from coreason_lab._widgets._state import WorkerState, WorkflowState
from coreason_lab._widgets._views import (
    FIGURE_INTERVAL_S,
    BudgetView,
    CacheView,
    DagView,
    DecodeView,
    View,
)

__all__ = ["VIEWS", "Dashboard"]

VIEWS: dict[str, type[View]] = {
    "budget": BudgetView,
    "dag": DagView,
    "cache": CacheView,
    "decode": DecodeView,
}


class Dashboard:
    """Live views of one runtime, fed by the event bus through a :class:`Throttle`.

    Parameters
    ----------
    runtime:
        The Coordinator (its bus feeds the views; its ledgers are the budget view's truth).
    controls:
        Where the pause / resume / preempt / abort buttons send their intents. The status line
        shows each workflow's control state from the ``workflow.*`` events, whoever sent them.
    workflow:
        Show and control one workflow; ``None`` shows all and controls the one picked.
    views:
        Which of ``budget``, ``dag``, ``cache``, ``decode`` to show.
    max_updates_per_second, max_points:
        The throttle's rate and the cap on points kept per series.
    start:
        Start the throttle's delivery thread (tests drive ``throttle.pump`` instead).
    """

    def __init__(
        self,
        runtime: Any,
        controls: Controls,
        *,
        workflow: str | None = None,
        views: Sequence[str] = tuple(VIEWS),
        max_updates_per_second: float = 10.0,
        max_points: int = 500,
        start: bool = True,
    ) -> None:
        unknown = [v for v in views if v not in VIEWS]
        if unknown:
            msg = f"unknown view(s) {unknown}; choose from {', '.join(VIEWS)}"
            raise ValueError(msg)
        self.runtime = runtime
        self.controls = controls
        self.workflow = workflow
        self.views: dict[str, View] = {}
        for name in views:
            if name == "budget":
                self.views[name] = BudgetView(max_points, workflow=workflow)
            elif name == "dag":
                self.views[name] = DagView()
            elif name == "cache":
                self.views[name] = CacheView(max_points)
            else:
                self.views[name] = DecodeView()
        areas = sorted(
            {a for v in self.views.values() for a in v.areas} | {"budget", "workflow", "scale"}
        )
        # what the controls hold now; the events replayed and delivered below keep it current
        self.workflows = WorkflowState()
        self.workflows.states.update({c.workflow_id: c.state for c in controls.workflows()})
        self.cluster = WorkerState()  # a cluster's workers, when their events are relayed here
        self.throttle = Throttle(
            runtime.bus, areas, max_per_second=max_updates_per_second, start=start
        )
        self.picker = W.Combobox(
            placeholder="workflow", value=workflow or "", options=self._workflow_options()
        )
        self.status = W.HTML()
        self._options_at = 0.0
        self._status_at = 0.0
        self._status_states: str | None = None
        self._render_lock = threading.Lock()
        self._redraw: threading.Timer | None = None
        buttons = []
        for intent, style, icon in (
            ("pause", "warning", "pause"),
            ("resume", "success", "play"),
            ("preempt", "info", "step-forward"),
            ("abort", "danger", "stop"),
        ):
            b = W.Button(
                description=intent,
                button_style=style,
                icon=icon,
                layout=W.Layout(width="auto", min_width="90px"),
            )
            b.on_click(lambda _b, i=intent: self.intent(i))
            buttons.append(b)
        self.freeze = W.ToggleButton(
            description="freeze view",
            value=False,
            tooltip="stop updating the views; the runtime keeps going",
        )
        self.freeze.observe(self._on_freeze, "value")
        tabs = W.Tab(children=[v.widget for v in self.views.values()])
        for i, v in enumerate(self.views.values()):
            tabs.set_title(i, v.title)
        self.buttons = dict(zip(("pause", "resume", "preempt", "abort"), buttons, strict=True))
        self.widget = W.VBox([W.HBox([self.picker, *buttons, self.freeze]), self.status, tabs])
        for control in (self.picker, *buttons, self.freeze):  # clicks act while a cell runs
            honour_frontend_subshell(getattr(control, "comm", None))
        self.throttle.attach(self.deliver)
        self.deliver(runtime.bus.history(areas))  # what happened before the dashboard opened

    def _workflow_options(self) -> list[str]:
        names = set(self.workflows.states)
        # the dashboard still opens if the ledger store is unavailable
        with contextlib.suppress(Exception):
            names |= {led.workflow_id for led in self.runtime.budgets.workflows()}
        return sorted(names)

    def deliver(self, batch: list[Event]) -> None:
        """Hand a batch to every view (each takes the areas it wants) and refresh status."""
        with self._render_lock:  # the throttle thread and the stale-plot timer both render
            self._deliver(batch)

    def _deliver(self, batch: list[Event]) -> None:
        areas = [e.type.value.split(".", 1)[0] for e in batch]
        for view in self.views.values():
            mine = [e for e, a in zip(batch, areas, strict=True) if a in view.areas]
            if mine or isinstance(view, BudgetView):
                view.update(mine, self.runtime)
        if any(v.stale for v in self.views.values()) and self._redraw is None:
            # a plot skipped during the burst is drawn once it is due, even if no event follows
            self._redraw = threading.Timer(FIGURE_INTERVAL_S, self._redraw_stale)
            self._redraw.daemon = True
            self._redraw.start()
        self.workflows.apply(batch)
        self.cluster.apply(batch)
        states = ", ".join(f"{wf}: {state}" for wf, state in self.workflows.states.items())
        if self.cluster.workers:
            states = " · ".join(filter(None, (states, f"workers: {self.cluster.summary()}")))
        now = time.monotonic()
        # The status line carries the throttle's counters, which change with every batch:
        # resent at once when a workflow's state changes, else at most once a second (each
        # widget update is a message on iopub, which costs the kernel more than building it).
        if states != self._status_states or now - self._status_at >= 1.0:
            self._status_states, self._status_at = states, now
            t = self.throttle
            self.status.value = (
                f"<small>{t.delivered_batches} updates · {t.delivered_events} events"
                f"{f' · {t.dropped} dropped' if t.dropped else ''}"
                f"{' · view frozen' if t.paused else ''}"
                f"{' · ' + html.escape(states) if states else ''}</small>"
            )
        if now - self._options_at >= 1.0:  # the ledger store is read at most once a second
            self._options_at = now
            options = self._workflow_options()
            if list(self.picker.options) != options:
                self.picker.options = options

    def _redraw_stale(self) -> None:
        with self._render_lock:
            self._redraw = None
            if self.throttle.closed:
                return
            for view in self.views.values():
                if view.stale:
                    view.render()

    def intent(self, intent: str, workflow: str | None = None) -> None:
        """Send a control intent for ``workflow`` (default: the picked one)."""
        target = workflow or self.workflow or self.picker.value
        if not target:
            self.status.value = "<small style='color:#d62728'>pick a workflow first</small>"
            return
        self.controls.apply(intent, target, reason="dashboard")
        self.throttle.flush()

    def _on_freeze(self, change: dict[str, Any]) -> None:
        if change["new"]:
            self.throttle.pause()
        else:
            self.throttle.resume()

    def close(self) -> None:
        """Unsubscribe and close the widgets; the runtime is untouched. Idempotent."""
        self.throttle.close()
        if self._redraw is not None:
            self._redraw.cancel()
        self.widget.close()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"<Dashboard views={list(self.views)} {self.throttle!r}>"

"""The routing view: the tier matrix, the policy's choice and reason per request, refusals."""

from __future__ import annotations

import collections
import html
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as W
from coreason_runtime import Event
from coreason_runtime.events import RequestFinished, RouteDecided, TierHealthChanged, WhatIfDecided

from coreason_lab._widgets._views import View

__all__ = ["RouteState", "RouteView", "tiers_html"]

MATRIX_INTERVAL_S = 2.0  # the tier matrix reads the routing history: at most every 2 s


@dataclass
class Choice:
    """One request's plan, and (once it finished) who answered at what C."""

    ts: float
    workflow_id: str | None
    family: str
    policy: str
    tiers: list[str]
    reason: str
    answered_by: str | None = None
    cost: float | None = None


class RouteState:
    """The last plans, the refused escalations and each tier's health, from the events."""

    def __init__(self, keep: int = 50) -> None:
        self.choices: collections.deque[Choice] = collections.deque(maxlen=keep)
        self.refusals: collections.deque[tuple[float, str | None, str, str]] = collections.deque(
            maxlen=keep
        )
        self.health: dict[str, str] = {}

    def apply(self, events: Iterable[Event]) -> None:
        for ev in events:
            p = ev.data
            if isinstance(p, RouteDecided):
                self.choices.append(
                    Choice(ev.ts, ev.workflow_id, p.family, p.policy, list(p.tiers), p.reason)
                )
            elif isinstance(p, RequestFinished):
                self._finished(ev.workflow_id, p)
            elif isinstance(p, WhatIfDecided) and _refused_escalation(ev.source, p):
                self.refusals.append((ev.ts, ev.workflow_id, p.name, p.reason))
            elif isinstance(p, TierHealthChanged):
                self.health[p.tier] = p.state

    def _finished(self, workflow_id: str | None, p: RequestFinished) -> None:
        for choice in reversed(self.choices):
            if choice.workflow_id == workflow_id and choice.answered_by is None:
                choice.answered_by, choice.cost = p.tier, p.cost
                return


def _refused_escalation(source: str | None, p: WhatIfDecided) -> bool:
    """A refusal by the router's gate of a request's escalation, or of one field's to a span
    tier (the simulator's gates publish ``escalate ...`` decisions of their own)."""
    return not p.allowed and source == "route.gate" and p.name.startswith(("escalate ", "span "))


def _cell(value: Any) -> str:
    return f"<td>{html.escape(str(value))}</td>"


def tiers_html(rows: Sequence[dict[str, Any]], policy: str) -> str:
    """The tier matrix as an HTML table (``%coreason tiers`` and the routing view)."""
    body = []
    for r in rows:
        rate = "–" if r["success_rate"] is None else f"{r['success_rate']:.0%}"
        mean = "–" if r["mean_cost"] is None else f"{r['mean_cost']:.0f}"
        colour = "#d62728" if r["health"] == "degraded" else "#2ca02c"
        body.append(
            "<tr>"
            + _cell(r["name"])
            + _cell(r["kind"])
            + _cell(r["model"] or "")
            + _cell(f"{r['weight_in']:g}·T_in + {r['weight_out']:g}·T_out")
            + _cell(f"{r['k_model']:.2f}")
            + f"<td style='color:{colour}'>{html.escape(r['health'])}</td>"
            + _cell(r["requests"])
            + _cell(rate)
            + _cell(mean)
            + "</tr>"
        )
    return (
        f"<div class='coreason-tiers'><b>tier matrix</b> · policy <code>{html.escape(policy)}"
        "</code><table><tr><th>tier</th><th>kind</th><th>model</th><th>C</th><th>K</th>"
        "<th>health</th><th>n</th><th>success</th><th>mean C</th></tr>"
        + "".join(body)
        + "</table></div>"
    )


class RouteView(View):
    """The tier matrix (with observed success and C), the policy's plan and reason per
    request (who answered, at what C), and the escalations the what-if gate refused."""

    areas = ("route", "whatif", "request")
    title = "Routing"

    def __init__(self, runtime: Any = None, max_rows: int = 12) -> None:
        self.state = RouteState()
        self.max_rows = max_rows
        self.matrix = W.HTML()
        self.choices = W.HTML()
        self.refusals = W.HTML()
        self.widget = W.VBox([self.matrix, self.choices, self.refusals])
        self._matrix_at = -1e9
        if runtime is not None:
            self._matrix(runtime)

    def _matrix(self, runtime: Any) -> None:
        """Redraw the tier matrix from the runtime (its history is a store query: ≤ 1/2 s)."""
        now = time.monotonic()
        if now - self._matrix_at < MATRIX_INTERVAL_S:
            return
        from coreason_runtime.route import tier_rows

        self._matrix_at = now
        self.matrix.value = tiers_html(tier_rows(runtime), runtime.tiers.settings.policy)

    def update(self, events: Sequence[Event], runtime: Any = None) -> None:
        self.state.apply(events)
        if runtime is not None:
            self._matrix(runtime)
        self.render()

    def render(self) -> None:
        rows = list(self.state.choices)[-self.max_rows :][::-1]
        self.choices.value = (
            "<b>choices</b><table><tr><th>workflow</th><th>family</th><th>plan</th>"
            "<th>answered</th><th>C</th><th>reason</th></tr>"
            + "".join(
                "<tr>"
                + _cell(c.workflow_id or "")
                + _cell(c.family)
                + _cell(" → ".join(c.tiers) or "(human)")
                + _cell(c.answered_by or "…")
                + _cell("" if c.cost is None else f"{c.cost:.0f}")
                + f"<td><small>{html.escape(c.reason)}</small></td></tr>"
                for c in rows
            )
            + "</table>"
        )
        refused = list(self.state.refusals)[-self.max_rows :][::-1]
        self.refusals.value = (
            f"<b>refused escalations</b> ({len(self.state.refusals)})<table>"
            + "".join(
                "<tr>" + _cell(wf or "") + _cell(name) + _cell(reason) + "</tr>"
                for _, wf, name, reason in refused
            )
            + "</table>"
        )

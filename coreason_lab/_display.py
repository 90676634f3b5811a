"""Rich displays: results with their provenance in the output metadata, secrets never shown."""

from __future__ import annotations

import html
from typing import Any

from coreason_runtime import redact

__all__ = ["ResultDisplay", "status_html"]


class ResultDisplay:
    """Wraps a router Result for display: HTML with tier, attempts, cost and provenance;
    output metadata ``coreason`` = tier, model, revision, tokens in/out, seed, cost, attempts.
    """

    def __init__(self, result: Any, *, name: str | None = None) -> None:
        self.result = result
        self.name = name

    def metadata(self) -> dict[str, Any]:
        meta = dict(self.result.metadata()) if hasattr(self.result, "metadata") else {}
        meta.setdefault("tier", getattr(self.result, "tier", None))
        meta.setdefault("model", getattr(self.result, "model", None))
        meta.setdefault("revision", getattr(self.result, "revision", None))
        meta.setdefault("seed", getattr(self.result, "seed", None))
        meta.setdefault("tokens_in", getattr(self.result, "tokens_in", None))
        meta.setdefault("tokens_out", getattr(self.result, "tokens_out", None))
        return redact(meta)  # type: ignore[no-any-return]

    def _repr_html_(self) -> str:
        inner = (
            self.result._repr_html_()
            if hasattr(self.result, "_repr_html_")
            else f"<pre>{html.escape(repr(self.result))}</pre>"
        )
        target = f"<small>→ <code>{html.escape(self.name)}</code></small>" if self.name else ""
        return str(redact(f"{inner}{target}"))

    def _repr_mimebundle_(
        self, include: Any = None, exclude: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        # no application/json: JupyterLab ranks its JSON viewer above HTML and would hide
        # the provenance table; the value's JSON is one click away in the HTML.
        data = {
            "text/plain": str(redact(repr(self.result))),
            "text/html": self._repr_html_(),
        }
        return data, {"coreason": self.metadata()}

    def __repr__(self) -> str:
        return str(redact(repr(self.result)))


def status_html(
    ledgers: list[Any],
    controls: list[Any],
    handles: list[Any],
    thunks: dict[str, Any],
    invariants: dict[str, Any],
) -> str:
    """One HTML block for ``%coreason status``."""
    led_rows = "".join(
        f"<tr><td>{html.escape(led.workflow_id)}</td>"
        f"<td>{'∞' if led.ceiling is None else f'{led.ceiling:g}'}</td>"
        f"<td>{led.spent:g}</td><td>{getattr(led, 'tokens_in', 0)}</td>"
        f"<td>{getattr(led, 'tokens_out', 0)}</td>"
        f"<td>{html.escape(', '.join(f'{k}: {v:g}' for k, v in (led.by_tier or {}).items()))}"
        "</td></tr>"
        for led in ledgers
    )
    ctl = ", ".join(f"{html.escape(c.workflow_id)}: {c.state}" for c in controls) or "none"
    hs = ", ".join(html.escape(repr(h)) for h in handles) or "none"
    th = ", ".join(html.escape(repr(t)) for t in thunks.values()) or "none"
    inv = ", ".join(html.escape(n) for n in invariants) or "none"
    return (
        "<div class='coreason-status'><table><tr><th>workflow</th><th>Ω</th><th>C spent</th>"
        f"<th>T in</th><th>T out</th><th>by tier</th></tr>{led_rows}</table>"
        f"<b>controls</b> {ctl}<br><b>requests</b> {hs}<br><b>steps</b> {th}<br>"
        f"<b>invariants</b> {inv}</div>"
    )

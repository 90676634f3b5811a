"""The Oracle Circuit: when every tier failed, a form built from the schema asks a human.

The form is generated from the JSON schema carried by :class:`EpistemicYieldError` (one
ipywidget per field type). On submit the answer is validated by the same schema and recorded
through ``rt.router.resolve_yield`` with tier ``"human"``; a rejected answer leaves the form
open with the validator's message, so a typo never corrupts the ledger or the namespace.
"""

from __future__ import annotations

import contextlib
import html
import json
from collections.abc import Callable
from typing import Any

import ipywidgets as W
from coreason_runtime import CoreasonError, EpistemicYieldError

__all__ = ["OracleForm", "field_kind"]


def _deref(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = schema
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return target if isinstance(target, dict) else {}
    return node


def field_kind(schema: dict[str, Any], node: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
    """``(kind, node, nullable)``: kind is enum, boolean, integer, number, string or json."""
    node = _deref(schema, node)
    nullable = False
    options = node.get("anyOf") or node.get("oneOf")
    if isinstance(options, list):
        non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
        nullable = len(non_null) < len(options)
        if len(non_null) == 1 and isinstance(non_null[0], dict):
            kind, inner, _ = field_kind(schema, non_null[0])
            return kind, {**node, **inner}, nullable
        return "json", node, nullable
    if "enum" in node:
        return "enum", node, nullable
    typ = node.get("type")
    if isinstance(typ, list):
        nullable = "null" in typ
        typ = next((t for t in typ if t != "null"), None)
    if typ in ("boolean", "integer", "number", "string"):
        return str(typ), node, nullable
    return "json", node, nullable


class OracleForm:
    """A form for the human's answer to a yielded request.

    Parameters
    ----------
    error:
        The :class:`EpistemicYieldError`; its ``schema`` and ``prompt`` build the form.
    resolve:
        Called with the answer dict; validates and records it (``rt.router.resolve_yield``
        bound to the error) and returns the Result. Raises on an invalid answer.
    on_done:
        Called with the Result once an answer was accepted.
    """

    def __init__(
        self,
        error: EpistemicYieldError,
        resolve: Callable[[dict[str, Any]], Any],
        on_done: Callable[[Any], None] | None = None,
    ) -> None:
        self.error = error
        self.schema: dict[str, Any] = dict(error.schema or {})
        self._resolve = resolve
        self._on_done = on_done
        self.result: Any = None
        self.fields: dict[str, tuple[W.Widget, str, bool]] = {}
        required = set(self.schema.get("required", []))
        props = self.schema.get("properties")
        if not isinstance(props, dict) or self.schema.get("type") not in (None, "object"):
            props = {"answer": self.schema}  # a non-object schema is answered as a whole
            required = {"answer"}
            self._whole = True
        else:
            self._whole = False
        rejected = self._rejected(error)
        rows: list[W.Widget] = []
        for name, node in props.items():
            kind, node, nullable = field_kind(self.schema, node if isinstance(node, dict) else {})
            is_required = name in required and not nullable
            widget = self._widget(kind, node, is_required)
            label = node.get("title") or name
            tip = node.get("description") or ""
            if name in rejected:  # the verifiers' reason, beside the field it names
                tip = f"✗ {rejected[name]}" + (f" · {tip}" if tip else "")
            rows.append(
                W.HBox(
                    [
                        W.HTML(
                            f"<b>{html.escape(str(label))}</b>"
                            f"{'' if is_required else ' <i>(optional)</i>'}",
                            layout=W.Layout(width="180px"),
                        ),
                        widget,
                        W.HTML(f"<small>{html.escape(str(tip))}</small>"),
                    ]
                )
            )
            self.fields[name] = (widget, kind, is_required)
        attempts = (
            ", ".join(f"{a.tier}#{a.index} {a.error_type or 'ok'}" for a in error.attempts)
            or "none"
        )
        header = W.HTML(
            "<div style='border-left:4px solid #ff7f0e;padding-left:8px'>"
            "<b>Oracle Circuit</b>: every tier failed, so this question needs a human.<br>"
            f"<b>workflow</b> {html.escape(str(error.workflow_id))} · <b>attempts</b> "
            f"{html.escape(attempts)}<br><b>question</b> "
            f"<pre style='white-space:pre-wrap'>{html.escape(error.prompt or '')}</pre>"
            f"{self._rejected_html(error)}</div>"
        )
        self.button = W.Button(description="Submit answer", button_style="warning", icon="check")
        self.button.on_click(lambda _b: self.submit())
        self.message = W.HTML()
        self.widget = W.VBox([header, *rows, self.button, self.message])

    def _rejected(self, error: EpistemicYieldError) -> dict[str, str]:
        """Top-level field -> why the request's verifiers rejected it, for the form's rows."""
        out: dict[str, str] = {}
        for f in error.failures:
            name = f.pointer[1:].split("/", 1)[0] if f.pointer else "answer"
            name = name.replace("~1", "/").replace("~0", "~")
            out[name] = "; ".join(filter(None, [out.get(name), f.message]))
        return out

    @staticmethod
    def _rejected_html(error: EpistemicYieldError) -> str:
        if not error.failures:
            return ""
        items = "".join(f"<li>{html.escape(f.describe())}</li>" for f in error.failures)
        return f"<b>rejected by the verifiers</b><ul>{items}</ul>"

    @staticmethod
    def _widget(kind: str, node: dict[str, Any], required: bool) -> W.Widget:
        default = node.get("default")
        if kind == "enum":
            options = [json.dumps(v) if not isinstance(v, str) else v for v in node["enum"]]
            return W.Dropdown(options=options, value=options[0] if options else None)
        if kind == "boolean":
            return W.Checkbox(value=bool(default), indent=False)
        if kind == "integer" and required:
            return W.IntText(value=int(default) if default is not None else 0)
        if kind == "number" and required:
            return W.FloatText(value=float(default) if default is not None else 0.0)
        if kind == "json":
            return W.Textarea(
                placeholder="JSON", value="" if default is None else json.dumps(default)
            )
        return W.Text(value="" if default is None else str(default))

    def values(self) -> dict[str, Any]:
        """The answer as the form holds it now, converted per field kind."""
        out: dict[str, Any] = {}
        for name, (widget, kind, required) in self.fields.items():
            raw = widget.value
            if isinstance(raw, str) and raw == "" and not required and kind != "string":
                continue
            if kind == "json" and isinstance(raw, str):
                # an unparsable value is passed on: the validator names the field
                with contextlib.suppress(json.JSONDecodeError):
                    raw = json.loads(raw) if raw.strip() else None
            elif kind in ("integer", "number") and isinstance(raw, str):
                with contextlib.suppress(ValueError):
                    raw = int(raw) if kind == "integer" else float(raw)
            elif kind == "enum" and isinstance(raw, str) and raw not in self._enum(name):
                raw = json.loads(raw)
            out[name] = raw
        return out

    def _enum(self, name: str) -> list[Any]:
        props = self.schema.get("properties", {}) if not self._whole else {"answer": self.schema}
        _, node, _ = field_kind(self.schema, props.get(name, {}))
        return list(node.get("enum", []))

    def fill(self, **values: Any) -> OracleForm:
        """Set fields programmatically (scripts, tests, executed notebooks)."""
        for name, value in values.items():
            if name not in self.fields:
                msg = f"the form has no field {name!r}; fields: {', '.join(self.fields)}"
                raise KeyError(msg)
            widget, kind, _ = self.fields[name]
            widget.value = json.dumps(value) if kind == "json" else value
        return self

    def submit(self) -> Any:
        """Validate and record the answer; returns the Result, or None if it was rejected."""
        if self.result is not None:
            return self.result
        answer = self.values()
        if self._whole:
            answer = answer.get("answer")  # type: ignore[assignment]
        try:
            result = self._resolve(answer)
        except (CoreasonError, ValueError, TypeError) as e:
            self.message.value = (
                f"<span style='color:#d62728'>Not accepted: {html.escape(str(e))}</span>"
            )
            return None
        self.result = result
        self.button.disabled = True
        for widget, _, _ in self.fields.values():
            widget.disabled = True
        self.message.value = (
            f"<span style='color:#2ca02c'>Recorded with tier "
            f"<b>{html.escape(str(getattr(result, 'tier', 'human')))}</b>."
            "</span>"
        )
        if self._on_done is not None:
            self._on_done(result)
        return result

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        state = "answered" if self.result is not None else "waiting"
        wf = self.error.workflow_id
        return f"<OracleForm workflow={wf!r} {state} fields={list(self.fields)}>"

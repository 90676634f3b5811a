"""The kernel side of the ``coreason`` comm: throttled event batches out, intents in.

Protocol (JSON, one dict per message):

kernel → frontend
    ``{"type": "hello", "version", "intents", "workflows": [{workflow_id, state}], "ledgers"}``
        once, when the frontend opens the comm;
    ``{"type": "events", "events": [Event as JSON ...], "dropped": int}``
        at most ``max_per_second`` times a second while the comm is open; each event's
        ``data`` holds the fields of its type's payload model (``coreason_runtime.events``),
        e.g. ``workflow.paused`` → ``{"state", "previous", "reason"}``;
    ``{"type": "ack", "intent", "workflow_id", "state"}`` after an intent was applied;
    ``{"type": "snapshot", "ledgers": [...], "workflows": [...]}`` on request;
    ``{"type": "error", "message"}`` for a malformed message (nothing was changed).
frontend → kernel
    ``{"type": "intent", "intent": "pause"|"resume"|"abort"|"preempt", "workflow_id": str}``;
    ``{"type": "snapshot"}``; ``{"type": "freeze"}`` / ``{"type": "unfreeze"}``.

Comm messages arrive on the shell channel, so while a cell blocks the main shell they wait;
a frontend that must act during a running cell sends them on an ipykernel 7 subshell (each
subshell runs its own thread), or the work runs with ``--background``. The subshell a message
names is the one that handles it: ipykernel ≥ 7.4 would otherwise send it to the subshell of
whichever request was current when the comm last sent (our event batches leave from a
background thread, where that is whichever cell started last — often the blocked main shell),
so the bridge turns that re-routing off for its comms.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from coreason_runtime import Controls, Event, may_hold_secret, redact

from coreason_lab._throttle import Throttle

__all__ = ["TARGET", "CommBridge", "event_json", "events_json", "honour_frontend_subshell"]

TARGET = "coreason"
MAX_EVENTS_PER_MESSAGE = 500
logger = logging.getLogger("coreason_lab.comm")


def event_json(event: Event) -> dict[str, Any]:
    """An event as JSON-safe data; unknown payload objects become strings, secrets are cut."""
    return events_json([event])[0]


def _body(event: Event) -> dict[str, Any]:
    # the payload's own fields, as ``Event.model_validate`` reads them back; values JSON cannot
    # hold (a caller's region object) become strings in ``events_json``
    body = event.model_dump(mode="python")
    body["type"] = event.type.value
    return body


def events_json(events: Sequence[Event]) -> list[dict[str, Any]]:
    """A batch of events as JSON-safe data, serialised once; secrets are cut.

    The structural redaction (dropping secret-looking keys, masking key values) runs only when
    the serialised batch could contain one: a batch whose text matches neither a secret key
    name nor a known key value cannot (the common case, and the cheap one: the side panel
    gets every event of the runtime).
    """
    text = json.dumps([_body(e) for e in events], default=str)
    if may_hold_secret(text):
        return redact(json.loads(text))  # type: ignore[no-any-return]
    return json.loads(text)  # type: ignore[no-any-return]


def _frontend_choice(_data: Any, subshell_id: str | None) -> str | None:
    """Where ipykernel routes a message for our comm: the subshell the frontend named."""
    return subshell_id


def honour_frontend_subshell(comm: Any) -> None:
    """Let the frontend's choice of subshell decide which thread handles ``comm``'s messages.

    ipykernel ≥ 7.4 sends a comm's incoming messages to the subshell whose request was current
    when the comm last sent; a comm that sends from a background thread (event batches, widget
    updates) or was opened by a cell would have a click queued behind the running cell. A
    no-op for comms without that routing (other kernels, older ipykernel, no kernel).
    """
    if comm is not None and hasattr(comm, "_reply_subshell_for"):
        comm._reply_subshell_for = _frontend_choice


def _ledgers(runtime: Any) -> list[dict[str, Any]]:
    try:
        return [led.model_dump(mode="json") for led in runtime.budgets.workflows()]
    except Exception:  # a snapshot without ledgers beats no snapshot
        logger.exception("reading ledgers for the side panel failed")
        return []


class CommBridge:
    """Registers the ``coreason`` comm target; one throttle per open comm.

    Parameters
    ----------
    runtime:
        What the comm reports on; its intents go to ``runtime.controls``. Or ``provider``, a
        function returning the runtime (started when the frontend first connects).
    max_per_second:
        Event batches per second per open comm.
    """

    def __init__(
        self,
        runtime: Any = None,
        max_per_second: float = 10.0,
        *,
        provider: Callable[[], Any] | None = None,
    ) -> None:
        if provider is None and runtime is None:
            msg = "CommBridge needs a runtime, or a provider of one"
            raise ValueError(msg)
        self._runtime = runtime
        self._provider = provider
        self.max_per_second = max_per_second
        self.open_comms: dict[str, tuple[Any, Throttle]] = {}
        self._registered = False

    def _resolve(self) -> None:
        if self._provider is not None:  # the runtime starts when the frontend first connects
            self._runtime = self._provider()

    @property
    def runtime(self) -> Any:
        self._resolve()
        return self._runtime

    @property
    def controls(self) -> Controls:
        controls: Controls = self.runtime.controls
        return controls

    def register(self) -> bool:
        """Register the target with the kernel's comm manager; False outside a kernel."""
        try:
            from comm import get_comm_manager

            manager = get_comm_manager()
            manager.register_target(TARGET, self.on_open)
        except Exception:  # no kernel (plain IPython): there is no frontend to talk to
            logger.debug("no comm manager; the %s comm is not available", TARGET)
            return False
        self._registered = True
        return True

    def unregister(self) -> None:
        for comm_id in list(self.open_comms):
            self._closed(comm_id)
        if self._registered:
            from comm import get_comm_manager

            get_comm_manager().unregister_target(TARGET, self.on_open)
            self._registered = False

    # --- one comm -------------------------------------------------------------------------------

    def on_open(self, comm: Any, open_msg: dict[str, Any]) -> None:
        throttle = Throttle(self.runtime.bus, None, max_per_second=self.max_per_second)

        def sink(batch: list[Event]) -> None:
            events = batch[-MAX_EVENTS_PER_MESSAGE:]
            comm.send(
                {
                    "type": "events",
                    "events": events_json(events),
                    "dropped": throttle.dropped + len(batch) - len(events),
                }
            )

        throttle.attach(sink)
        honour_frontend_subshell(comm)
        self.open_comms[comm.comm_id] = (comm, throttle)
        comm.on_msg(lambda msg: self.on_msg(comm, msg))
        comm.on_close(lambda _msg: self._closed(comm.comm_id))
        from coreason_lab import __version__

        comm.send(
            {
                "type": "hello",
                "version": __version__,
                "intents": list(Controls.INTENTS),
                "workflows": self._workflows(),
                "ledgers": _ledgers(self.runtime),
            }
        )

    def _workflows(self) -> list[dict[str, str]]:
        return [
            {"workflow_id": c.workflow_id, "state": c.state.value}
            for c in self.controls.workflows()
        ]

    def on_msg(self, comm: Any, msg: dict[str, Any]) -> None:
        data = msg.get("content", {}).get("data")
        reply = self.handle(data, comm.comm_id)
        comm.send(reply)

    def handle(self, data: Any, comm_id: str | None = None) -> dict[str, Any]:
        """Apply one frontend message; returns the reply. Never raises on bad input."""
        if not isinstance(data, dict):
            got = type(data).__name__
            return {"type": "error", "message": f"expected a JSON object, got {got}"}
        kind = data.get("type", "intent")
        if kind == "snapshot":
            return {
                "type": "snapshot",
                "ledgers": _ledgers(self.runtime),
                "workflows": self._workflows(),
            }
        if kind in ("freeze", "unfreeze") and comm_id in self.open_comms:
            throttle = self.open_comms[comm_id][1]
            throttle.pause() if kind == "freeze" else throttle.resume()
            return {"type": "ack", "intent": kind}
        if kind != "intent":
            return {"type": "error", "message": f"unknown message type {kind!r}"}
        intent, workflow = data.get("intent"), data.get("workflow_id")
        if intent not in Controls.INTENTS:
            return {
                "type": "error",
                "message": f"unknown intent {intent!r}; expected one of {list(Controls.INTENTS)}",
            }
        if not isinstance(workflow, str) or not workflow:
            return {"type": "error", "message": "an intent needs a workflow_id"}
        state = self.controls.apply(intent, workflow, reason="side panel")
        return {"type": "ack", "intent": intent, "workflow_id": workflow, "state": state.value}

    def _closed(self, comm_id: str) -> None:
        entry = self.open_comms.pop(comm_id, None)
        if entry is not None:
            entry[1].close()

    def close(self) -> None:
        self.unregister()

"""What belongs to the notebook rather than to one verb: its replay record and the last error.

A kernel started for a notebook knows the notebook's path (Jupyter puts it in
``JPY_SESSION_NAME``; ipykernel also binds ``__session__``). With that name the runtime's
:class:`~coreason_runtime.tensor.ReplayRecord` records every request of the notebook, so
re-running it answers each request again exactly, at no cost (``%coreason replay on|off|clear``).
A kernel that knows no notebook (plain IPython, a console) replays only when asked.
"""

from __future__ import annotations

import html
import os
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.display import HTML

__all__ = ["notebook_name", "replay_record", "show_last_error", "switch_replay"]


def notebook_name(namespace: dict[str, Any]) -> str | None:
    """The notebook this kernel runs, as Jupyter names it; ``None`` outside a notebook."""
    name = os.environ.get("JPY_SESSION_NAME") or namespace.get("__session__")
    return str(name) if name else None


def replay_record(runtime: Any) -> Any:
    """The runtime's replay record (created off on first use; the router consults it)."""
    from coreason_runtime.tensor import ReplayRecord

    return runtime.engine("replay", ReplayRecord.for_runtime)


def switch_replay(runtime: Any, action: str, notebook: str | None) -> HTML:
    """``%coreason replay [on|off|clear]``: switch the record, or show it."""
    record = replay_record(runtime)
    if action == "on":
        record.use(notebook or record.notebook or "session")
    elif action == "off":
        record.enabled = False
    elif action == "clear":
        if record.notebook is None and notebook is not None:
            record.use(notebook, enabled=False)
        n = record.clear()
        return HTML(f"replay record cleared: {n} answer(s) forgotten")
    elif action != "status":
        msg = f"%coreason replay: expected on, off, clear or nothing, got {action!r}"
        raise UsageError(msg)
    state = "on" if record.enabled else "off"
    where = html.escape(str(record.path)) if record.notebook is not None else "no notebook yet"
    return HTML(
        f"replay <b>{state}</b> · {len(record)} recorded answer(s) · "
        f"{record.hits} replayed in this kernel · <code>{where}</code>"
    )


def show_last_error(shell: Any) -> None:
    """``%coreason debug``: the full traceback of the last error (as ``%tb`` shows it)."""
    if shell is None or getattr(sys, "last_value", None) is None:
        msg = "%coreason debug: no error yet in this kernel"
        raise UsageError(msg)
    shell.showtraceback((sys.last_type, sys.last_value, sys.last_traceback))

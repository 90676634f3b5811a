"""Ctrl-C and the ledger: hold an interrupt across bookkeeping that must not be cut in half.

A ``KeyboardInterrupt`` is raised in the main thread between any two bytecodes. While a local
decode runs on that thread (a plain ``rt.router.generate`` in a script or a notebook cell) it
usually lands inside a forward pass, where every exit path settles the attempt's reservation.
The few lines that write the ledger — taking a reservation, settling it — are the exception:
cut there, a reservation would stay open until the process dies. :func:`interrupts_deferred`
holds a SIGINT that arrives inside such a block and delivers it right after, so the interrupt
still stops the work, a few microseconds later, with the ledger whole.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = [
    "INTERRUPT_NOTE",
    "add_interrupt_note",
    "interrupt_note",
    "interrupt_summary",
    "interrupts_deferred",
]

#: The prefix of the note an interrupted request adds to its ``KeyboardInterrupt``.
INTERRUPT_NOTE = "coreason: "


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a SIGINT that arrives inside the block; deliver it when the block ends.

    Only the main thread receives signals, so elsewhere (and where the handler cannot be
    replaced) the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # SIG_IGN or SIG_DFL: nothing raises in Python
        yield
        return
    pending: list[tuple[int, FrameType | None]] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        pending.append((signum, frame))

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            previous(*pending[0])  # the default handler raises KeyboardInterrupt here


def interrupt_note(error: BaseException, **facts: Any) -> None:
    """Add one line to ``error`` (PEP 678 note) saying what an interrupted attempt cost.

    ``facts``: ``tokens_out``, ``tier``, ``cost``, ``workflow_id``. The notebook layer shows
    this line instead of the traceback; a script's traceback ends with it.
    """
    add_interrupt_note(
        error,
        f"interrupted after {facts['tokens_out']} tokens on tier {facts['tier']!r}; "
        f"C {facts['cost']:g} charged to workflow {facts['workflow_id']!r}, nothing left reserved",
    )


def add_interrupt_note(error: BaseException, text: str) -> None:
    """Add ``text`` as the interrupt's account (once; an outer layer's account replaces none)."""
    if interrupt_summary(error) is None:
        error.add_note(INTERRUPT_NOTE + text)


def interrupt_summary(error: BaseException) -> str | None:
    """The one-line account of what an interrupted request ran and cost, if it has one."""
    for note in getattr(error, "__notes__", ()):
        if isinstance(note, str) and note.startswith(INTERRUPT_NOTE):
            return note[len(INTERRUPT_NOTE) :]
    return None

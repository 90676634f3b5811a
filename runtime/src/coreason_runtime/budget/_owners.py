"""Whether the process that made a reservation is gone: the one liveness test of the ledgers."""

from __future__ import annotations

import psutil

__all__ = ["owner_gone"]

# psutil derives a start time from the boot time, which /proc gives in whole seconds: the owner's
# start time may read up to a second late. A pid reused within a second of a reservation would
# need the whole pid space to wrap in that second.
_START_SLACK_S = 1.0


def owner_gone(pid: int, created: float) -> bool:
    """Whether process ``pid``, which made a reservation at ``created`` (epoch s), is gone.

    Gone means: no such process, a zombie (dead but not yet reaped by its parent), or a process
    that started after the reservation was made (the pid was reused).
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        return float(proc.create_time()) > created + _START_SLACK_S
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:  # another user's live process: it exists
        return False

"""Ending a streamed answer the moment its workflow is aborted, not at its next chunk."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from coreason_runtime._controls import ControlState

if TYPE_CHECKING:
    from openai import Stream
    from openai.types.chat import ChatCompletionChunk

__all__ = ["CloseOnAbort"]


class CloseOnAbort:
    """Cuts a streamed answer's connection the moment its workflow is aborted.

    A pause holds the stream at its next chunk (the meter's checkpoint); an abort must not wait
    for a chunk a slow or stalled server may never send. Shutting the socket down wakes the
    thread blocked reading it at once, and the attempt ends with ``WorkflowAbortedError``.
    """

    def __init__(self, stream: Stream[ChatCompletionChunk]) -> None:
        self._stream = stream
        self.fired = False

    def control(self, state: ControlState) -> None:
        if state is not ControlState.ABORTED:
            return
        self.fired = True
        network = self._stream.response.extensions.get("network_stream")
        try:
            if network is not None:
                network.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
            else:
                self._stream.close()
        except OSError:  # already closed: nothing left to cut
            pass

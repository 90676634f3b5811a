"""A purpose-built misbehaving OpenAI-compatible server on 127.0.0.1, for the oracle tier's tests.

Each ``FaultyServer`` speaks raw HTTP/1.1 over asyncio streams on its own thread, so a test can
make it fail exactly as a real server does: refuse credentials (echoing the key back, to prove
the tier redacts it), rate-limit with ``Retry-After``, send malformed SSE, cut the connection
in the middle of a chunked body, end a stream without a ``finish_reason``, or stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FaultyServer", "Received", "chunk_event", "running"]


@dataclass
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def chunk_event(
    content: str | None = None, finish: str | None = None, usage: tuple[int, int] | None = None
) -> bytes:
    """One SSE ``data:`` event holding a ``chat.completion.chunk``."""
    choices = (
        []
        if content is None and finish is None
        else [
            {
                "index": 0,
                "delta": {"content": content} if content is not None else {},
                "finish_reason": finish,
            }
        ]
    )
    body: dict[str, Any] = {
        "id": "chatcmpl-faulty",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "faulty",
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
        }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


@dataclass
class FaultyServer:
    """A loopback server whose behaviour is ``mode``:

    ``ok`` (``tokens`` one-word chunks, a finish and usage), ``unauthorized`` (401 echoing the
    Authorization header), ``forbidden`` (403), ``rate_limited`` (429 with ``Retry-After`` for
    the first ``fail_first`` requests, then ``ok``), ``malformed`` (``tokens`` chunks then a
    broken event), ``cut`` (``tokens`` chunks then the socket closes mid chunked body),
    ``no_finish`` (``tokens`` chunks then a clean end without ``finish_reason``), ``stall``
    (``tokens`` chunks, then silence).

    Chunks hold ``words_per_chunk`` one-token words each. With ``continuous`` the server honours
    ``stream_options.continuous_usage_stats`` (usage so far on every chunk, as vLLM does); with
    ``strict_options`` it refuses that option with a 400, as a strict server does. The final
    usage reports ``reported_out`` output tokens when set (a server counting differently).
    """

    mode: str
    tokens: int = 5
    fail_first: int = 1
    retry_after: str = "1"
    prompt_tokens: int = 7
    words_per_chunk: int = 1
    continuous: bool = False
    strict_options: bool = False
    reported_out: int | None = None
    received: list[Received] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"faulty-{self.mode}")

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FaultyServer:
        self._thread.start()
        if not self._ready.wait(10):
            msg = "faulty server did not start"
            raise RuntimeError(msg)
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await server.wait_closed()

    # --- one connection ----------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                self.received.append(request)
                keep = await self._respond(request, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # the client left, or the server is stopping
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _respond(self, request: Received, writer: asyncio.StreamWriter) -> bool:
        mode = self.mode
        if mode == "rate_limited":
            if len(self.received) <= self.fail_first:
                body = {"error": {"message": "slow down", "type": "rate_limit_error"}}
                await _send_json(writer, 429, body, {"Retry-After": self.retry_after})
                return True
            mode = "ok"
        if mode == "unauthorized":
            # Like a careless proxy: the refused credentials are echoed back.
            echoed = request.headers.get("authorization", "")
            body = {
                "error": {
                    "message": f"invalid credentials: {echoed}",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            }
            await _send_json(writer, 401, body, {})
            return True
        if mode == "forbidden":
            await _send_json(writer, 403, {"error": {"message": "forbidden"}}, {})
            return True
        options = request.body.get("stream_options") or {}
        asked = bool(options.get("continuous_usage_stats"))
        if asked and self.strict_options:
            message = "Unrecognized request argument: stream_options.continuous_usage_stats"
            await _send_json(writer, 400, {"error": {"message": message}}, {})
            return True
        per_chunk = asked and self.continuous
        await _start_stream(writer)
        words = [f"w{i} " for i in range(self.tokens)]
        step = self.words_per_chunk
        for start in range(0, len(words), step):
            sent = min(start + step, len(words))
            usage = (self.prompt_tokens, sent) if per_chunk else None
            await _send_chunk(writer, chunk_event("".join(words[start:sent]), usage=usage))
        if mode == "ok":
            await _send_chunk(writer, chunk_event(finish="stop"))
            reported = self.tokens if self.reported_out is None else self.reported_out
            await _send_chunk(writer, chunk_event(usage=(self.prompt_tokens, reported)))
            await _send_chunk(writer, b"data: [DONE]\n\n")
            await _send_chunk(writer, b"")
            return True
        if mode == "malformed":
            await _send_chunk(writer, b'data: {"id": "x", "choices": [ {"delta"\n\n')
            await _send_chunk(writer, b"data: [DONE]\n\n")
            await _send_chunk(writer, b"")
            return True
        if mode == "cut":
            # Half of a chunk-size line, then the connection drops: an incomplete chunked body.
            writer.write(b"40\r\ndata: {")
            await writer.drain()
            return False
        if mode == "no_finish":
            await _send_chunk(writer, b"data: [DONE]\n\n")
            await _send_chunk(writer, b"")
            return True
        if mode == "stall":
            await asyncio.sleep(30)
            return False
        msg = f"unknown mode {mode!r}"
        raise ValueError(msg)


async def _read_request(reader: asyncio.StreamReader) -> Received | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0"))
    raw = await reader.readexactly(length) if length else b""
    body = json.loads(raw) if raw else {}
    return Received(method=method, path=path, headers=headers, body=body)


async def _send_json(
    writer: asyncio.StreamWriter, status: int, body: dict[str, Any], extra: dict[str, str]
) -> None:
    reasons = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 429: "Too Many Requests"}
    data = json.dumps(body).encode()
    head = [
        f"HTTP/1.1 {status} {reasons.get(status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
    ]
    head += [f"{k}: {v}" for k, v in extra.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    await writer.drain()


async def _start_stream(writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n"
    )
    await writer.drain()


async def _send_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    """One HTTP chunk (an empty one ends the body)."""
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


@contextlib.contextmanager
def running(mode: str, **kwargs: Any) -> Iterator[FaultyServer]:
    """A started :class:`FaultyServer`, stopped on exit."""
    server = FaultyServer(mode, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()

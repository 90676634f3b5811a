"""The server's bounds, each one small function: body, model name, schema, context, queue, time.

Every limit is checked before the model is touched: a request that cannot be served is refused
in microseconds (with a typed error the app turns into an OpenAI-style error), never after it
has held the model thread. The body guard is plain ASGI, so it sees the bytes before FastAPI
parses them and still passes client disconnects through to the endpoints.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from coreason_runtime._exceptions import (
    ContextLengthError,
    InvalidBodyError,
    ModelNotFoundError,
    RequestError,
    RequestTooLargeError,
    ServerBusyError,
)

__all__ = [
    "DEFAULT_ALIASES",
    "BodyGuard",
    "ServeLimits",
    "check_model",
    "check_queue",
    "check_schema_size",
    "fit_context",
    "low_priority_worker",
    "parse_body",
    "request_deadline",
    "retry_after",
]

# Names a client may use for "whatever this server serves": the oracle tier's default model
# name is "default", so `COREASON_ORACLE_BASE_URL=http://127.0.0.1:8000/v1` alone works.
DEFAULT_ALIASES: tuple[str, ...] = ("default",)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class ServeLimits:
    """What one server accepts.

    Parameters
    ----------
    max_body_bytes:
        The largest request body (413 ``request_too_large`` above it).
    max_schema_bytes:
        The largest ``response_format`` schema, as compact JSON (400 ``schema_too_large``).
    max_queue:
        Requests queued for or running on the model at once (429 with ``Retry-After`` above).
    request_timeout:
        Seconds from a request's arrival to its last token: queueing and prefill included
        (504 ``timeout`` when it passes).
    """

    max_body_bytes: int = 1 << 20
    max_schema_bytes: int = 64 << 10
    max_queue: int = 16
    request_timeout: float = 120.0


def check_model(requested: str | None, served: str, aliases: tuple[str, ...]) -> None:
    """Refuse a model name that is neither the served model nor one of its aliases."""
    if requested is None or requested == served or requested in aliases:
        return
    msg = f"the model {requested!r} does not exist on this server; it serves {served!r}"
    raise ModelNotFoundError(msg)


def check_schema_size(schema: Any, limit: int) -> None:
    """Refuse a schema larger than ``limit`` bytes of compact JSON."""
    size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode())
    if size > limit:
        msg = f"the response_format schema is {size} bytes; this server accepts at most {limit}"
        raise RequestTooLargeError(msg, limit=limit, size=size)


def fit_context(prompt_tokens: int, max_tokens: int, context: int | None, *, explicit: bool) -> int:
    """The output limit to decode with, or :class:`ContextLengthError` if nothing fits.

    A limit the client asked for must fit beside the prompt (as OpenAI answers); the server's
    default is shortened to what fits.
    """
    if context is None:
        return max_tokens
    room = context - prompt_tokens
    if room >= max_tokens:
        return max_tokens
    if room >= 1 and not explicit:
        return room
    msg = (
        f"this model's maximum context length is {context} tokens; the messages hold "
        f"{prompt_tokens}"
        + (f" and {max_tokens} more were asked for the completion" if explicit else "")
        + "; shorten the messages"
        + (" or max_tokens" if explicit else "")
    )
    raise ContextLengthError(msg, limit=context, size=prompt_tokens + max_tokens)


def _lower_priority() -> None:
    with contextlib.suppress(OSError, AttributeError):  # Linux: a thread has its own nice value
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def low_priority_worker() -> concurrent.futures.ThreadPoolExecutor:
    """One thread at nice +10, for checks (prompt counts) a hostile client can make costly."""
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="coreason-serve-check", initializer=_lower_priority
    )


def request_deadline(limits: ServeLimits, now: float | None = None) -> float:
    """The monotonic time by which a request arriving ``now`` must be done."""
    return (time.monotonic() if now is None else now) + limits.request_timeout


def retry_after(waiting: int, seconds_per_request: float) -> int:
    """Whole seconds until the queue has likely drained by one: at least 1, at most 60."""
    return int(min(max(math.ceil(waiting * seconds_per_request), 1), 60))


def check_queue(waiting: int, limit: int, seconds_per_request: float) -> None:
    """Refuse one more request when ``waiting`` already fill the queue."""
    if waiting < limit:
        return
    wait = retry_after(waiting, seconds_per_request)
    msg = f"the server is busy ({waiting} requests queued or running); retry in {wait} s"
    raise ServerBusyError(msg, tier="local", retry_after=wait)


def _has_lone_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_body(body: bytes) -> Any:
    """The JSON value of a request body; :class:`InvalidBodyError` if it is not clean JSON."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        msg = f"the body is not UTF-8 (byte {e.start} is invalid)"
        raise InvalidBodyError(msg, code="invalid_json") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        msg = f"the body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        raise InvalidBodyError(msg, code="invalid_json") from None
    except RecursionError:
        msg = "the body is not valid JSON: nested too deeply"
        raise InvalidBodyError(msg, code="invalid_json") from None
    if _has_lone_surrogate(value):
        msg = "the body holds a lone UTF-16 surrogate (such as \\ud800): text must be Unicode"
        raise InvalidBodyError(msg, code="invalid_unicode")
    return value


class BodyGuard:
    """ASGI middleware: a body over ``limit`` bytes, or not UTF-8 JSON, never reaches the app.

    ``refuse(exc)`` builds the error response (an ASGI app) for a refused body. The body read
    here is replayed to the app, after which the app's ``receive`` is the client's again (so
    the endpoints still see a disconnect).
    """

    def __init__(self, app: ASGIApp, limit: int, refuse: Callable[[RequestError], ASGIApp]) -> None:
        self.app = app
        self.limit = limit
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read(scope, receive)
            if body is None:
                return  # the client left while sending
            if body:
                parse_body(body)
        except RequestError as e:
            await self.refuse(e)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, scope: Scope, receive: Receive) -> bytes | None:
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            raise _too_large(declared, self.limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise _too_large(size, self.limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(size: int, limit: int) -> RequestTooLargeError:
    msg = f"the request body is {size} bytes or more; this server accepts at most {limit}"
    return RequestTooLargeError(msg, limit=limit, size=size)

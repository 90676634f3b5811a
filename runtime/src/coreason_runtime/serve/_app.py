"""The FastAPI app: ``/v1/chat/completions`` (streamed or not), ``/v1/models``, ``/health``.

Every limit (body, model name, schema, context, queue, deadline) is checked before the model
is touched (``serve/_limits.py``); every refusal is one OpenAI-style error with a stable code
(``serve/_errors.py``); ``/openapi.json`` describes all of it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from coreason_runtime._exceptions import (
    ClientDisconnectedError,
    RequestError,
    TierTimeoutError,
    WorkflowAbortedError,
)
from coreason_runtime.serve._errors import ApiError, api_error
from coreason_runtime.serve._host import Job, ModelHost
from coreason_runtime.serve._limits import (
    DEFAULT_ALIASES,
    BodyGuard,
    ServeLimits,
    check_model,
    check_schema_size,
    fit_context,
    low_priority_worker,
    request_deadline,
)
from coreason_runtime.serve._openapi import (
    COMPLETION_RESPONSES,
    Health,
    ModelList,
    error_responses,
)
from coreason_runtime.serve._protocol import (
    ChatRequest,
    ResponseFormat,
    chunk_body,
    completion_body,
    new_completion_id,
    usage_body,
)

if TYPE_CHECKING:
    from coreason_runtime.tensor._types import TierOutput

__all__ = ["create_app"]

logger = logging.getLogger("coreason_runtime.serve")

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _Unauthorized(Exception):
    """No valid bearer token on a ``/v1`` request; answered with an OpenAI-style 401."""


def create_app(
    tier: Any,
    token: str | None = None,
    model_name: str = "coreason-local",
    *,
    default_max_tokens: int = 256,
    max_tokens_ceiling: int = 4096,
    batch: int = 8,
    limits: ServeLimits | None = None,
    aliases: tuple[str, ...] = DEFAULT_ALIASES,
) -> FastAPI:
    """An OpenAI-compatible app over one local tier shared by every client.

    Parameters
    ----------
    tier:
        The local tier (``LocalTier``), or a zero-argument callable that loads one; a loader
        runs in the background at startup and ``/health`` says ``"loading"`` until it is done.
    token:
        When given, every ``/v1`` request needs ``Authorization: Bearer <token>``; the
        ``COREASON_SERVE_TOKEN`` variable is read when this is ``None``.
    model_name:
        The id reported by ``/v1/models`` and in every completion; a request naming another
        model (not one of ``aliases``) gets 404 ``model_not_found``.
    default_max_tokens, max_tokens_ceiling:
        The output limit when a request names none, and the most any request may ask for.
    limits:
        Body size, schema size, queue length and the request deadline (:class:`ServeLimits`).
    batch:
        How many requests decode at once, batched on the model (``1``: one at a time); the
        queue (``limits.max_queue``) counts them with the requests waiting.
    """
    if token is None:
        token = os.environ.get("COREASON_SERVE_TOKEN") or None
    limits = limits or ServeLimits()
    host = ModelHost(tier, model_name, max_queue=limits.max_queue, batch=batch)
    api = _Endpoints(host, model_name, default_max_tokens, max_tokens_ceiling, limits, aliases)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        host.start()
        yield
        host.close()
        api._counter.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="coreason serve",
        summary="OpenAI-compatible chat completions over one local model",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.host = host
    app.exception_handler(RequestValidationError)(_invalid)
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.exception_handler(_Unauthorized)(_unauthorized)
    app.add_middleware(BodyGuard, limit=limits.max_body_bytes, refuse=_refusal)
    guarded = [Depends(_bearer(token))]
    app.get("/health", response_model=Health, responses=error_responses(503))(api.health)
    app.get(
        "/v1/models", response_model=ModelList, dependencies=guarded, responses=error_responses(401)
    )(api.models)
    app.post(
        "/v1/chat/completions",
        response_model=None,
        dependencies=guarded,
        responses=COMPLETION_RESPONSES,
    )(api.chat_completions)
    return app


def _refusal(e: RequestError) -> Callable[..., Awaitable[None]]:
    """The ASGI response for a body the guard refused; the connection closes with it, so a
    client sending megabytes stops instead of having them drained."""
    error = api_error(e)
    return ApiError(error.code, error.message, {**error.headers, "Connection": "close"}).response()


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A request body that does not validate: 400 naming the first bad field."""
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":  # the body guard lets none through; kept exact
        return ApiError("invalid_json", "the body is not valid JSON").response()
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    what = str(first.get("msg", "bad value")).removeprefix("Value error, ")
    message = f"invalid request: {where}: {what}" if where else f"invalid request: {what}"
    return ApiError("invalid_value", message, param=where or None).response()


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Routing errors (no such path, wrong method) in the same shape as every other error."""
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
        return ApiError("not_found", message).response()
    if exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
        return ApiError("method_not_allowed", message).response()
    return ApiError("invalid_value", str(exc.detail)).response()


async def _unauthorized(request: Request, exc: _Unauthorized) -> JSONResponse:
    return ApiError(
        "invalid_api_key", "invalid or missing bearer token", {"WWW-Authenticate": "Bearer"}
    ).response()


def _bearer(token: str | None) -> Callable[[Request], Awaitable[None]]:
    """The dependency that checks a ``/v1`` request's bearer token (none when ``token`` is None).

    A dependency, not an HTTP middleware: Starlette's BaseHTTPMiddleware wraps the ASGI
    receive channel and would hide client disconnects from the endpoints.
    """

    async def require_token(request: Request) -> None:
        if token is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            value.strip().encode(), token.encode()
        ):
            raise _Unauthorized

    return require_token


@dataclass
class _Endpoints:
    """The routes of one app, over the host every client shares."""

    host: ModelHost
    model_name: str
    default_max_tokens: int
    max_tokens_ceiling: int
    limits: ServeLimits
    aliases: tuple[str, ...]
    # prompts are counted off the model thread, one at a time, at a low CPU priority: a
    # flood of over-long prompts then slows the decoding of the others as little as it can
    _counter: concurrent.futures.ThreadPoolExecutor = field(default_factory=low_priority_worker)

    async def health(self) -> JSONResponse:
        host = self.host
        body: dict[str, Any] = {
            "status": host.state,
            "model": self.model_name,
            "queued": host.waiting,
            "served": host.served,
            "cancelled": host.cancelled,
        }
        if host.error:
            body["error"] = host.error
        return JSONResponse(body, status_code=200 if host.state == "ok" else 503)

    async def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.model_name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "coreason",
                }
            ],
        }

    async def chat_completions(self, body: ChatRequest, raw: Request) -> Response:
        try:
            return await self._chat(body, raw)
        except Exception as e:  # every refusal, expected or not, answers in one shape
            return api_error(e).response()

    async def _chat(self, body: ChatRequest, raw: Request) -> Response:
        deadline = request_deadline(self.limits)  # queueing and prefill count against it
        refusal = self._unavailable()
        if refusal is not None:
            return refusal.response()
        check_model(body.model, self.model_name, self.aliases)
        job = Job(
            messages=body.chat(),
            max_tokens=body.limit(self.default_max_tokens, self.max_tokens_ceiling),
            temperature=body.temperature if body.temperature is not None else 1.0,
            seed=body.seed,
            deadline=deadline,
        )
        refusal = await self._constrain(job, body.response_format)
        if refusal is not None:
            return refusal.response()
        await self._fit(job, body)
        self.host.check_capacity()  # 429 now, before a streamed answer sends its headers
        cid = new_completion_id()
        if body.stream:
            options = body.stream_options
            include_usage = bool(options and options.include_usage)
            continuous = bool(options and options.include_usage and options.continuous_usage_stats)
            chunks = _Chunks(cid, self.model_name, include_usage, continuous)
            return _stream(self.host, job, chunks)
        return await self._complete(job, cid, raw)

    def _unavailable(self) -> ApiError | None:
        """A 503 while the model loads (or after it failed to), else ``None``."""
        host = self.host
        if host.state == "ok":
            return None
        if host.state == "loading":
            message = f"model {self.model_name!r} is still loading; retry shortly"
            return ApiError("model_loading", message, {"Retry-After": "1"})
        return ApiError("model_error", f"model {self.model_name!r} failed to load")

    async def _constrain(self, job: Job, fmt: ResponseFormat | None) -> ApiError | None:
        """Compile the response format's schema onto ``job``; a refusal if it cannot be."""
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_schema":
            if fmt.json_schema is None:
                message = "response_format json_schema needs a 'json_schema' field"
                return ApiError("invalid_value", message, param="response_format")
            schema = fmt.json_schema.schema_
        else:
            schema = {"type": "object"}
        try:
            check_schema_size(schema, self.limits.max_schema_bytes)
        except RequestError as e:
            return ApiError("schema_too_large", e.message, param="response_format")
        # Compiling needs no model: it runs beside decoding, not queued behind it.
        job.schema = await asyncio.to_thread(self.host.backend.compile, schema)
        return None

    async def _fit(self, job: Job, body: ChatRequest) -> None:
        """Count the prompt (off the model thread) and fit the output into the context."""
        backend = self.host.backend
        loop = asyncio.get_running_loop()
        prompt = await loop.run_in_executor(self._counter, backend.count_prompt, job)
        explicit = (body.max_completion_tokens or body.max_tokens) is not None
        job.limit_output(
            fit_context(prompt, job.max_tokens, backend.context_length, explicit=explicit)
        )

    async def _complete(self, job: Job, cid: str, raw: Request) -> Response:
        """Decode ``job`` whole; stop decoding if the client leaves before the answer."""
        task = self.host.submit(_generate, self.host, job)
        task.add_done_callback(_observed)
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and await raw.is_disconnected():
                job.cancel()  # nobody will read the answer: stop decoding it
        try:
            out = task.result()
        except ClientDisconnectedError:
            return Response(status_code=499)  # nobody is left to read it
        return JSONResponse(
            completion_body(
                cid, self.model_name, out.text, out.finish_reason, out.tokens_in, out.tokens_out
            )
        )


def _observed(task: asyncio.Future[Any]) -> None:
    """Retrieve a finished task's exception, so one nobody awaits (client gone) is not logged."""
    if not task.cancelled():
        task.exception()


def _generate(host: ModelHost, job: Job) -> TierOutput:
    if job.cancelled.is_set():  # the client left while the request was queued
        host.record(cancelled=True)
        msg = "the client disconnected before decoding began"
        raise ClientDisconnectedError(msg, tier="local", workflow_id=job.workflow_id)
    left = None if job.deadline is None else job.deadline - time.monotonic()
    if left is not None and left <= 0:
        msg = "the request waited in the queue past its deadline"
        raise TierTimeoutError(msg, tier="local", workflow_id=job.workflow_id)
    try:
        out = host.backend.generate(job, job.meter, left)
    except WorkflowAbortedError as e:  # the job's controls: its client hung up mid-decode
        host.record(cancelled=True)
        msg = "the client disconnected; decoding stopped"
        raise ClientDisconnectedError(msg, tier="local", workflow_id=job.workflow_id) from e
    host.record(cancelled=False)
    return out


@dataclass
class _Chunks:
    """Server-sent chunks of one streamed completion; with ``continuous`` usage, every chunk
    carries the tokens counted so far (``usage`` is then the count when the text was sent)."""

    cid: str
    model: str
    include_usage: bool
    continuous: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def delta(
        self,
        delta: dict[str, Any],
        finish: str | None = None,
        usage: tuple[int, int] | None = None,
    ) -> str:
        body = chunk_body(
            self.cid,
            self.model,
            self.created,
            delta=delta,
            finish=finish,
            usage=usage_body(*usage) if self.continuous and usage is not None else None,
            with_usage_field=self.include_usage,
        )
        return _sse(body)

    def usage(self, out: TierOutput) -> str:
        usage = usage_body(out.tokens_in, out.tokens_out)
        return _sse(chunk_body(self.cid, self.model, self.created, usage=usage))


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


def _stream(host: ModelHost, job: Job, chunks: _Chunks) -> Response:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, tuple[int, int]] | None] = asyncio.Queue()

    def on_text(text: str) -> None:
        # on the model thread, right after the text's tokens were counted
        counted = (job.meter.tokens_in, job.meter.tokens_out)
        loop.call_soon_threadsafe(queue.put_nowait, (text, counted))

    job.on_text = on_text

    async def events() -> AsyncIterator[str]:
        task = asyncio.ensure_future(host.run(_generate, host, job))  # busy: reported in-band

        def finished(t: asyncio.Future[TierOutput]) -> None:
            queue.put_nowait(None)
            _observed(t)

        task.add_done_callback(finished)
        try:
            yield chunks.delta({"role": "assistant", "content": ""})
            sent: list[str] = []
            while (item := await queue.get()) is not None:
                text, counted = item
                sent.append(text)
                yield chunks.delta({"content": text}, usage=counted)
            for event in _stream_end(task, "".join(sent), chunks):
                yield event
        finally:
            # The client hung up (or we are done): stop decoding at the next token.
            job.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers=_SSE_HEADERS)


def _stream_end(task: asyncio.Future[TierOutput], streamed: str, chunks: _Chunks) -> Iterator[str]:
    """The events after the last streamed token: the rest of the text, finish, usage, done."""
    try:
        out = task.result()
    except ClientDisconnectedError:
        return
    except Exception as e:  # reported to the client in-band; the server keeps serving
        # OpenAI streams report a mid-stream failure as an error event, then stop.
        yield _sse(api_error(e).body())
        return
    counted = (out.tokens_in, out.tokens_out)
    if out.text != streamed:
        # Text the tier did not stream token by token (or held back at the end).
        rest = out.text.removeprefix(streamed) if out.text.startswith(streamed) else out.text
        yield chunks.delta({"content": rest}, usage=counted)
    yield chunks.delta({}, finish=out.finish_reason, usage=counted)
    if chunks.include_usage:
        yield chunks.usage(out)
    yield "data: [DONE]\n\n"

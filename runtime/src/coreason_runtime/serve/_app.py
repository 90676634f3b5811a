"""The FastAPI app: ``/v1/chat/completions`` (streamed or not), ``/v1/models``, ``/health``."""

from __future__ import annotations

import asyncio
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

from coreason_runtime._exceptions import (
    ClientDisconnectedError,
    CoreasonError,
    RequestError,
    SchemaCompileTimeout,
    SchemaError,
    WorkflowAbortedError,
)
from coreason_runtime.serve._host import Job, ModelHost
from coreason_runtime.serve._protocol import (
    ChatRequest,
    ResponseFormat,
    chunk_body,
    completion_body,
    error_body,
    new_completion_id,
    usage_body,
)
from coreason_runtime.tensor._types import UnmeteredMeter

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
        The id reported by ``/v1/models`` and in every completion.
    default_max_tokens, max_tokens_ceiling:
        The output limit when a request names none, and the most any request may ask for.
    batch:
        How many requests decode at once, batched on the model (``1``: one at a time).
    """
    if token is None:
        token = os.environ.get("COREASON_SERVE_TOKEN") or None
    host = ModelHost(tier, model_name, batch=batch)
    api = _Endpoints(host, model_name, default_max_tokens, max_tokens_ceiling)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        host.start()
        yield
        host.close()

    app = FastAPI(
        title="coreason serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.host = host
    app.exception_handler(RequestValidationError)(_invalid)
    app.exception_handler(_Unauthorized)(_unauthorized)
    guarded = [Depends(_bearer(token))]
    app.get("/health")(api.health)
    app.get("/v1/models", dependencies=guarded)(api.models)
    app.post("/v1/chat/completions", response_model=None, dependencies=guarded)(
        api.chat_completions
    )
    return app


def _error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> JSONResponse:
    """An OpenAI-style error response."""
    return JSONResponse(
        error_body(message, type_, code, param), status_code=status, headers=headers
    )


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A request body that does not validate: 400 naming the first bad field."""
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    what = str(first.get("msg", "bad value")).removeprefix("Value error, ")
    return _error(
        400,
        f"invalid request: {where}: {what}" if where else f"invalid request: {what}",
        param=where or None,
    )


async def _unauthorized(request: Request, exc: _Unauthorized) -> JSONResponse:
    return _error(
        401,
        "invalid or missing bearer token",
        "invalid_request_error",
        "invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


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
        refusal = self._unavailable()
        if refusal is not None:
            return refusal
        job = Job(
            messages=body.chat(),
            max_tokens=body.limit(self.default_max_tokens, self.max_tokens_ceiling),
            temperature=body.temperature if body.temperature is not None else 1.0,
            seed=body.seed,
        )
        refusal = await self._constrain(job, body.response_format)
        if refusal is not None:
            return refusal
        cid = new_completion_id()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _stream(self.host, job, cid, self.model_name, include_usage)
        return await self._complete(job, cid, raw)

    def _unavailable(self) -> JSONResponse | None:
        """A 503 while the model loads (or after it failed to), else ``None``."""
        host = self.host
        if host.state == "ok":
            return None
        message = (
            f"model {self.model_name!r} is still loading; retry shortly"
            if host.state == "loading"
            else f"model failed to load: {host.error}"
        )
        return _error(
            503,
            message,
            "server_error",
            f"model_{host.state}",
            headers={"Retry-After": "1"} if host.state == "loading" else None,
        )

    async def _constrain(self, job: Job, fmt: ResponseFormat | None) -> JSONResponse | None:
        """Compile the response format's schema onto ``job``; an error response if it fails."""
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_schema":
            if fmt.json_schema is None:
                return _error(400, "response_format json_schema needs a 'json_schema' field")
            schema = fmt.json_schema.schema_
        else:
            schema = {"type": "object"}
        try:
            # Compiling needs no model: it runs beside decoding, not queued behind it.
            job.schema = await asyncio.to_thread(self.host.backend.compile, schema)
        except SchemaCompileTimeout as e:
            return _error(
                503,
                f"{e}; the grammar is still compiling, retry shortly",
                "server_error",
                "schema_compiling",
                headers={"Retry-After": "1"},
            )
        except SchemaError as e:
            return _error(
                400, f"response_format schema cannot be enforced: {e}", code="invalid_schema"
            )
        return None

    async def _complete(self, job: Job, cid: str, raw: Request) -> Response:
        """Decode ``job`` whole; stop decoding if the client leaves before the answer."""
        task = asyncio.ensure_future(self.host.run(_generate, self.host, job))
        task.add_done_callback(_observed)
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and await raw.is_disconnected():
                job.cancel()  # nobody will read the answer: stop decoding it
        try:
            out = task.result()
        except ClientDisconnectedError:
            return Response(status_code=499)  # nobody is left to read it
        except (RequestError, SchemaError) as e:
            return _error(400, str(e))
        except CoreasonError as e:
            logger.warning("generation failed: %s", e)
            return _error(500, f"generation failed: {e}", "server_error")
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
    try:
        out = host.backend.generate(job, UnmeteredMeter(job.max_tokens))
    except WorkflowAbortedError as e:  # the job's controls: its client hung up mid-decode
        host.record(cancelled=True)
        msg = "the client disconnected; decoding stopped"
        raise ClientDisconnectedError(msg, tier="local", workflow_id=job.workflow_id) from e
    host.record(cancelled=False)
    return out


@dataclass
class _Chunks:
    """Server-sent chunks of one streamed completion."""

    cid: str
    model: str
    include_usage: bool
    created: int = field(default_factory=lambda: int(time.time()))

    def delta(self, delta: dict[str, Any], finish: str | None = None) -> str:
        return _sse(
            chunk_body(
                self.cid,
                self.model,
                self.created,
                delta=delta,
                finish=finish,
                with_usage_field=self.include_usage,
            )
        )

    def usage(self, out: TierOutput) -> str:
        usage = usage_body(out.tokens_in, out.tokens_out)
        return _sse(chunk_body(self.cid, self.model, self.created, usage=usage))


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


def _stream(host: ModelHost, job: Job, cid: str, model: str, include_usage: bool) -> Response:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def on_text(text: str) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, text)

    job.on_text = on_text
    chunks = _Chunks(cid, model, include_usage)

    async def events() -> AsyncIterator[str]:
        task = asyncio.ensure_future(host.run(_generate, host, job))

        def finished(t: asyncio.Future[TierOutput]) -> None:
            queue.put_nowait(None)
            _observed(t)

        task.add_done_callback(finished)
        try:
            yield chunks.delta({"role": "assistant", "content": ""})
            sent: list[str] = []
            while (text := await queue.get()) is not None:
                sent.append(text)
                yield chunks.delta({"content": text})
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
        logger.warning("streamed generation failed: %s", e)
        # OpenAI streams report a mid-stream failure as an error event, then stop.
        yield _sse(error_body(f"generation failed: {e}", "server_error"))
        return
    if out.text != streamed:
        # Text the tier did not stream token by token (or held back at the end).
        rest = out.text.removeprefix(streamed) if out.text.startswith(streamed) else out.text
        yield chunks.delta({"content": rest})
    yield chunks.delta({}, finish=out.finish_reason)
    if chunks.include_usage:
        yield chunks.usage(out)
    yield "data: [DONE]\n\n"

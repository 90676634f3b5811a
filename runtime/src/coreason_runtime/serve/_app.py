"""The FastAPI app: ``/v1/chat/completions`` (streamed or not), ``/v1/models``, ``/health``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
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
    """
    if token is None:
        token = os.environ.get("COREASON_SERVE_TOKEN") or None
    host = ModelHost(tier, model_name)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        host.start()
        yield
        host.close()

    app = FastAPI(
        title="coreason serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.host = host

    def _error(
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> JSONResponse:
        return JSONResponse(
            error_body(message, type_, code, param), status_code=status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        what = str(first.get("msg", "bad value")).removeprefix("Value error, ")
        return _error(
            400,
            f"invalid request: {where}: {what}" if where else f"invalid request: {what}",
            param=where or None,
        )

    # A dependency, not an HTTP middleware: Starlette's BaseHTTPMiddleware wraps the ASGI
    # receive channel and would hide client disconnects from the endpoints.
    async def require_token(request: Request) -> None:
        if token is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            value.strip().encode(), token.encode()
        ):
            raise _Unauthorized

    @app.exception_handler(_Unauthorized)
    async def _unauthorized(request: Request, exc: _Unauthorized) -> JSONResponse:
        return _error(
            401,
            "invalid or missing bearer token",
            "invalid_request_error",
            "invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )

    guarded = [Depends(require_token)]

    @app.get("/health")
    async def health() -> JSONResponse:
        body: dict[str, Any] = {
            "status": host.state,
            "model": model_name,
            "queued": host.waiting,
            "served": host.served,
            "cancelled": host.cancelled,
        }
        if host.error:
            body["error"] = host.error
        return JSONResponse(body, status_code=200 if host.state == "ok" else 503)

    @app.get("/v1/models", dependencies=guarded)
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": model_name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "coreason",
                }
            ],
        }

    @app.post("/v1/chat/completions", response_model=None, dependencies=guarded)
    async def chat_completions(body: ChatRequest, raw: Request) -> Response:
        if host.state != "ok":
            status = 503
            message = (
                f"model {model_name!r} is still loading; retry shortly"
                if host.state == "loading"
                else f"model failed to load: {host.error}"
            )
            return _error(
                status,
                message,
                "server_error",
                f"model_{host.state}",
                headers={"Retry-After": "1"} if host.state == "loading" else None,
            )
        job = Job(
            messages=body.chat(),
            max_tokens=body.limit(default_max_tokens, max_tokens_ceiling),
            temperature=body.temperature if body.temperature is not None else 1.0,
            seed=body.seed,
        )
        fmt = body.response_format
        if fmt is not None and fmt.type != "text":
            if fmt.type == "json_schema":
                if fmt.json_schema is None:
                    return _error(400, "response_format json_schema needs a 'json_schema' field")
                schema = fmt.json_schema.schema_
            else:
                schema = {"type": "object"}
            try:
                # Compiling needs no model: it runs beside decoding, not queued behind it.
                job.schema = await asyncio.to_thread(host.backend.compile, schema)
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
        cid = new_completion_id()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _stream(host, job, cid, model_name, include_usage)
        task = asyncio.ensure_future(host.run(_generate, host, job))
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
                cid, model_name, out.text, out.finish_reason, out.tokens_in, out.tokens_out
            )
        )

    return app


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


def _stream(host: ModelHost, job: Job, cid: str, model: str, include_usage: bool) -> Response:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def on_text(text: str) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, text)

    job.on_text = on_text
    created = int(time.time())

    def sse(body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

    async def events() -> AsyncIterator[str]:
        task = asyncio.ensure_future(host.run(_generate, host, job))

        def finished(t: asyncio.Future[TierOutput]) -> None:
            queue.put_nowait(None)
            _observed(t)

        task.add_done_callback(finished)
        try:
            yield sse(
                chunk_body(
                    cid,
                    model,
                    created,
                    delta={"role": "assistant", "content": ""},
                    with_usage_field=include_usage,
                )
            )
            sent: list[str] = []
            while True:
                text = await queue.get()
                if text is None:
                    break
                sent.append(text)
                yield sse(
                    chunk_body(
                        cid, model, created, delta={"content": text}, with_usage_field=include_usage
                    )
                )
            try:
                out = task.result()
            except ClientDisconnectedError:
                return
            except Exception as e:  # reported to the client in-band; the server keeps serving
                logger.warning("streamed generation failed: %s", e)
                # OpenAI streams report a mid-stream failure as an error event, then stop.
                yield sse(error_body(f"generation failed: {e}", "server_error"))
                return
            streamed = "".join(sent)
            if out.text != streamed:
                # Text the tier did not stream token by token (or held back at the end).
                rest = (
                    out.text.removeprefix(streamed) if out.text.startswith(streamed) else out.text
                )
                yield sse(
                    chunk_body(
                        cid, model, created, delta={"content": rest}, with_usage_field=include_usage
                    )
                )
            yield sse(
                chunk_body(
                    cid,
                    model,
                    created,
                    delta={},
                    finish=out.finish_reason,
                    with_usage_field=include_usage,
                )
            )
            if include_usage:
                yield sse(
                    chunk_body(cid, model, created, usage=usage_body(out.tokens_in, out.tokens_out))
                )
            yield "data: [DONE]\n\n"
        finally:
            # The client hung up (or we are done): stop decoding at the next token.
            job.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers=_SSE_HEADERS)

"""One error shape for every answer the server refuses: OpenAI's envelope with a stable code.

``{"error": {"message", "type", "param", "code"}}``, always JSON, whatever failed: a bad body,
a limit, the model, or a bug. Messages say what the client can act on; internal state (grammar
dumps, tracebacks, paths) stays in the server log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from coreason_runtime._exceptions import (
    ContextLengthError,
    CoreasonError,
    InvalidBodyError,
    ModelNotFoundError,
    RequestError,
    RequestTooLargeError,
    SchemaCompileTimeout,
    SchemaError,
    ServerBusyError,
    TierTimeoutError,
    TierUnavailableError,
)
from coreason_runtime.serve._protocol import error_body

__all__ = ["CODES", "ApiError", "ErrorBody", "ErrorDetail", "api_error", "public_message"]

logger = logging.getLogger("coreason_runtime.serve")

_MESSAGE_CHARS = 300

# Every code the server answers with, and its HTTP status: a client may rely on these.
CODES: dict[str, int] = {
    "invalid_json": 400,
    "invalid_unicode": 400,
    "invalid_value": 400,
    "invalid_schema": 400,
    "schema_too_large": 400,
    "context_length_exceeded": 400,
    "invalid_api_key": 401,
    "not_found": 404,
    "model_not_found": 404,
    "method_not_allowed": 405,
    "request_too_large": 413,
    "rate_limit_exceeded": 429,
    "internal_error": 500,
    "generation_failed": 500,
    "model_loading": 503,
    "model_error": 503,
    "model_unavailable": 503,
    "schema_compiling": 503,
    "timeout": 504,
}


class ErrorDetail(BaseModel):
    """The inside of OpenAI's error envelope."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """``{"error": {...}}``: what every refused request gets back."""

    error: ErrorDetail


@dataclass(frozen=True)
class ApiError:
    """One refusal: its code (which fixes the status), a message, headers, the bad field."""

    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    param: str | None = None

    @property
    def status(self) -> int:
        return CODES[self.code]

    @property
    def type(self) -> str:
        if self.status == 429:
            return "requests"  # as OpenAI types its 429s
        return "invalid_request_error" if self.status < 500 else "server_error"

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers or None)


def public_message(text: str) -> str:
    """The part of an error message fit for a client: its first line, at most 300 characters."""
    first = text.strip().splitlines()[0] if text.strip() else "error"
    return first if len(first) <= _MESSAGE_CHARS else first[: _MESSAGE_CHARS - 1] + "…"


def _busy(e: ServerBusyError) -> ApiError:
    wait = str(max(int(e.retry_after), 1))
    return ApiError("rate_limit_exceeded", public_message(e.message), {"Retry-After": wait})


def _compiling(e: SchemaCompileTimeout) -> ApiError:
    msg = f"{public_message(e.message)}; the grammar is still compiling, retry shortly"
    return ApiError("schema_compiling", msg, {"Retry-After": "1"})


def _schema(e: SchemaError) -> ApiError:
    msg = f"response_format schema cannot be enforced: {public_message(e.message)}"
    return ApiError("invalid_schema", msg)


def _generation(e: CoreasonError) -> ApiError:
    logger.warning("generation failed: %s: %s", type(e).__name__, e.message)
    return ApiError("generation_failed", f"generation failed ({type(e).__name__})")


_BY_TYPE: dict[type[BaseException], Any] = {
    InvalidBodyError: lambda e: ApiError(e.code, public_message(e.message)),
    ModelNotFoundError: lambda e: ApiError(
        "model_not_found", public_message(e.message), {}, "model"
    ),
    ContextLengthError: lambda e: ApiError(
        "context_length_exceeded", public_message(e.message), {}, "messages"
    ),
    RequestTooLargeError: lambda e: ApiError("request_too_large", public_message(e.message)),
    RequestError: lambda e: ApiError("invalid_value", public_message(e.message)),
    SchemaCompileTimeout: _compiling,
    SchemaError: _schema,
    ServerBusyError: _busy,
    TierTimeoutError: lambda e: ApiError(
        "timeout", "the request passed its deadline (queueing and decoding included)"
    ),
    TierUnavailableError: lambda e: ApiError("model_unavailable", public_message(e.message)),
    CoreasonError: _generation,
}


def api_error(e: BaseException) -> ApiError:
    """The refusal for ``e``: its closest type's, else a 500 that tells nothing internal."""
    for cls in type(e).__mro__:
        make = _BY_TYPE.get(cls)
        if make is not None:
            result: ApiError = make(e)
            return result
    logger.error("unexpected error serving a request", exc_info=e)
    return ApiError("internal_error", "internal server error; the server log has the details")

"""What ``/openapi.json`` says the server answers: response models and the error statuses.

The bodies themselves are built by :mod:`coreason_runtime.serve._protocol`; these models only
describe them, so that a client generator or a schemathesis run can check every answer.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from coreason_runtime.serve._errors import CODES, ErrorBody

__all__ = ["COMPLETION_RESPONSES", "ChatCompletion", "Health", "ModelList", "error_responses"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    """A whole (non-streamed) completion; a streamed one is ``text/event-stream`` chunks."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    """``/health``: 200 once the model is loaded, 503 while it loads or after it failed."""

    status: Literal["loading", "ok", "error"]
    model: str
    queued: int
    served: int
    cancelled: int
    error: str | None = None


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of these error statuses, with their codes."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        codes = sorted(code for code, s in CODES.items() if s == status)
        out[status] = {"model": ErrorBody, "description": "error; code: " + ", ".join(codes)}
    return out


COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": ChatCompletion,
        "description": "the completion (or, with stream=true, server-sent chunks)",
        # each server-sent event: `data:` holds a chunk's JSON (or an error, or [DONE])
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
                    "required": ["data"],
                }
            }
        },
    },
    **error_responses(400, 401, 404, 413, 429, 500, 503, 504),
}

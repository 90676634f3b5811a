"""The OpenAI chat-completions wire format: requests in, completions and chunks out."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "JsonSchemaFormat",
    "ResponseFormat",
    "StreamOptions",
    "chunk_body",
    "completion_body",
    "error_body",
    "new_completion_id",
    "usage_body",
]


_UNSUPPORTED = ("tools", "functions", "tool_choice", "stop", "logprobs", "logit_bias", "audio")


class ChatMessage(BaseModel):
    """One chat message; content parts (``[{"type": "text", "text": ...}]``) are joined."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts: list[str] = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                msg = "only text content parts are supported"
                raise ValueError(msg)
            parts.append(part["text"])
        return "".join(parts)


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: a named schema, strict or not."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = "output"
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False
    # vLLM's extension: usage (so far) on every chunk, so a client can meter the stream exactly
    continuous_usage_stats: bool = False


class ChatRequest(BaseModel):
    """The subset of ``POST /v1/chat/completions`` this server honours; unknown fields pass."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    # torch seeds are 64-bit: a larger one would fail on the model thread, not here
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    n: int = Field(default=1, ge=1, le=1)
    response_format: ResponseFormat | None = None

    @field_validator("messages")
    @classmethod
    def _texts(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        for m in messages:
            m.text()
        return messages

    @model_validator(mode="after")
    def _unsupported(self) -> ChatRequest:
        # Refused rather than silently ignored: a client relying on them would be misled.
        extra = self.model_extra or {}
        named = [k for k in _UNSUPPORTED if extra.get(k) not in (None, False, [], {})]
        if named:
            msg = f"not supported by coreason serve: {', '.join(named)}"
            raise ValueError(msg)
        return self

    def chat(self) -> list[dict[str, str]]:
        """Messages as ``{"role", "content"}`` dicts (``developer`` read as ``system``)."""
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]

    def limit(self, default: int, ceiling: int) -> int:
        """The output token limit asked for (``max_completion_tokens`` first), capped."""
        asked = self.max_completion_tokens or self.max_tokens or default
        return min(asked, ceiling)


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage_body(tokens_in: int, tokens_out: int) -> dict[str, int]:
    return {
        "prompt_tokens": tokens_in,
        "completion_tokens": tokens_out,
        "total_tokens": tokens_in + tokens_out,
    }


def completion_body(
    cid: str, model: str, text: str, finish: str, tokens_in: int, tokens_out: int
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": usage_body(tokens_in, tokens_out),
    }


def chunk_body(
    cid: str,
    model: str,
    created: int,
    *,
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    usage: dict[str, int] | None = None,
    with_usage_field: bool = False,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``delta=None`` makes the usage-only closing chunk."""
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    if with_usage_field or usage is not None:
        body["usage"] = usage
    return body


def error_body(
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """The OpenAI error envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}

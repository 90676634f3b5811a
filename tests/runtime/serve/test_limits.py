"""The server's bounds and its one error shape, in-process over a backend double (no model)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from coreason_runtime import ConfigurationError, SchemaCompileError
from coreason_runtime.serve import create_app
from coreason_runtime.serve._cli import build_parser, read_limits, read_token
from coreason_runtime.serve._errors import CODES
from coreason_runtime.serve._limits import ServeLimits, fit_context
from coreason_runtime.tensor import TierOutput
from coreason_runtime.tensor._schema import SchemaSpec
from fastapi.testclient import TestClient

MODEL = "served-model"


class Backend:
    """The server's seam to its model, scripted: words are tokens, a context of 100.

    ``gate`` (when set) holds every decode until released; ``calls`` records each decode's
    messages and the timeout it was given.
    """

    context_length = 100

    def __init__(self, *, fail: BaseException | None = None) -> None:
        self.calls: list[tuple[str, float | None]] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.fail = fail

    def compile(self, json_schema: dict[str, Any]) -> Any:
        if json_schema.get("title") == "bad":
            msg = "no grammar\n<state>internal dump</state>"
            raise SchemaCompileError(msg)
        return SchemaSpec.from_user(json_schema)

    def count_prompt(self, job: Any) -> int:
        return sum(len(m["content"].split()) for m in job.messages)

    def generate(self, job: Any, meter: Any, timeout: float | None = None) -> TierOutput:
        self.calls.append((job.messages[-1]["content"], timeout))
        self.started.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.fail is not None:
            raise self.fail
        return TierOutput(text="ok", tokens_in=1, tokens_out=1, model=MODEL)

    def close(self) -> None:
        pass


def chat(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture
def backend() -> Backend:
    return Backend()


@pytest.fixture
def client(backend: Backend) -> Iterator[TestClient]:
    app = create_app(
        backend,
        model_name=MODEL,
        limits=ServeLimits(max_body_bytes=4096, max_schema_bytes=512, max_queue=2),
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def assert_openai_error(r: httpx.Response, code: str) -> dict[str, Any]:
    assert r.status_code == CODES[code]
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert "Traceback" not in error["message"] and "<state>" not in error["message"]
    assert "\n" not in error["message"] and len(error["message"]) <= 300
    return dict(error)


# --- the body ------------------------------------------------------------------------------


def test_a_body_over_the_limit_gets_413_before_it_is_parsed(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=chat("x " * 3000))
    assert_openai_error(r, "request_too_large")
    assert r.headers["connection"] == "close"  # the rest of the upload is not drained


def test_a_streamed_body_without_a_length_is_cut_at_the_limit(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"x" * 100

    r = client.post(
        "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_openai_error(r, "request_too_large")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"messages": [}', "invalid_json"),
        (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', "invalid_json"),
        (b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}', "invalid_unicode"),
        (b"[" * 5000, "request_too_large"),
    ],
)
def test_a_body_that_is_not_clean_json_gets_one_error_shape(
    client: TestClient, backend: Backend, raw: bytes, code: str
) -> None:
    r = client.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    error = assert_openai_error(r, code)
    assert error["param"] is None
    assert backend.calls == []


def test_json_nested_too_deeply_is_invalid_json_not_a_crash(backend: Backend) -> None:
    app = create_app(backend, model_name=MODEL, limits=ServeLimits(max_body_bytes=1 << 20))
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post(
            "/v1/chat/completions",
            content=b"[" * 200_000,
            headers={"content-type": "application/json"},
        )
    assert_openai_error(r, "invalid_json")


# --- what the request asks for ---------------------------------------------------------------


def test_an_unknown_model_gets_404_model_not_found(client: TestClient, backend: Backend) -> None:
    r = client.post("/v1/chat/completions", json={**chat(), "model": "gpt-9"})
    error = assert_openai_error(r, "model_not_found")
    assert error["param"] == "model"
    assert backend.calls == []


@pytest.mark.parametrize("model", [MODEL, "default", None])
def test_the_served_model_its_alias_or_none_is_served(client: TestClient, model: Any) -> None:
    body = chat()
    if model is None:
        del body["model"]
    else:
        body["model"] = model
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert r.json()["model"] == MODEL


def test_a_prompt_over_the_context_is_refused_before_the_model_sees_it(
    client: TestClient, backend: Backend
) -> None:
    r = client.post("/v1/chat/completions", json=chat("w " * 150))
    error = assert_openai_error(r, "context_length_exceeded")
    assert error["param"] == "messages"
    assert "100" in error["message"]
    assert backend.calls == []


def test_asked_output_that_does_not_fit_beside_the_prompt_is_refused(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=chat("w " * 60, max_tokens=50))
    assert_openai_error(r, "context_length_exceeded")


def test_the_default_output_limit_is_shortened_to_what_fits() -> None:
    assert fit_context(60, 256, 100, explicit=False) == 40
    assert fit_context(60, 30, 100, explicit=True) == 30
    assert fit_context(60, 30, None, explicit=True) == 30


def test_a_schema_over_the_limit_is_refused(client: TestClient) -> None:
    schema = {"enum": list(range(400))}
    fmt = {"type": "json_schema", "json_schema": {"name": "big", "schema": schema}}
    r = client.post("/v1/chat/completions", json=chat(response_format=fmt))
    assert_openai_error(r, "schema_too_large")


def test_a_schema_error_names_no_internal_state(client: TestClient) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"title": "bad"}}}
    r = client.post("/v1/chat/completions", json=chat(response_format=fmt))
    error = assert_openai_error(r, "invalid_schema")
    assert "no grammar" in error["message"]


# --- the queue and the deadline --------------------------------------------------------------


def _hold(client: TestClient, backend: Backend, n: int) -> list[threading.Thread]:
    """Start ``n`` requests that hold the model (and the queue) until the gate opens."""
    backend.gate = threading.Event()
    threads = [
        threading.Thread(
            target=client.post, args=("/v1/chat/completions",), kwargs={"json": chat()}
        )
        for _ in range(n)
    ]
    for t in threads:
        t.start()
    assert backend.started.wait(10)
    deadline = time.monotonic() + 10
    while client.get("/health").json()["queued"] < n:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return threads


@pytest.mark.parametrize("stream", [False, True])
def test_a_full_queue_answers_429_with_retry_after(
    client: TestClient, backend: Backend, stream: bool
) -> None:
    held = _hold(client, backend, 2)
    try:
        r = client.post("/v1/chat/completions", json=chat(stream=stream))
        assert_openai_error(r, "rate_limit_exceeded")
        assert r.json()["error"]["type"] == "requests"
        assert int(r.headers["retry-after"]) >= 1
    finally:
        assert backend.gate is not None
        backend.gate.set()
        for t in held:
            t.join(10)
    assert client.post("/v1/chat/completions", json=chat()).status_code == 200


def test_the_deadline_covers_the_wait_in_the_queue(backend: Backend) -> None:
    limits = ServeLimits(request_timeout=0.3, max_queue=4)
    # one decode at a time: "late" queues behind the held one (as it would behind a full batch)
    app = create_app(backend, model_name=MODEL, limits=limits, batch=1)
    with TestClient(app, raise_server_exceptions=False) as c:
        held = _hold(c, backend, 1)
        late: list[httpx.Response] = []
        waiter = threading.Thread(
            target=lambda: late.append(c.post("/v1/chat/completions", json=chat("late")))
        )
        waiter.start()
        time.sleep(0.5)  # the queued request's whole deadline passes while the model is busy
        assert backend.gate is not None
        backend.gate.set()
        waiter.join(10)
        for t in held:
            t.join(10)
    assert_openai_error(late[0], "timeout")
    assert [content for content, _ in backend.calls] == ["hello"]  # "late" never decoded
    assert backend.calls[0][1] is not None and backend.calls[0][1] <= 0.3


# --- failures inside -------------------------------------------------------------------------


def test_an_unexpected_crash_is_a_500_that_tells_nothing_internal() -> None:
    backend = Backend(fail=KeyError("/secret/path <state>"))
    with TestClient(create_app(backend, model_name=MODEL), raise_server_exceptions=False) as c:
        r = c.post("/v1/chat/completions", json=chat())
        streamed = c.post("/v1/chat/completions", json=chat(stream=True))
    error = assert_openai_error(r, "internal_error")
    assert "secret" not in error["message"]
    events = [line.removeprefix("data: ") for line in streamed.text.splitlines() if line]
    in_band = json.loads(events[-1])
    assert in_band["error"]["code"] == "internal_error"
    assert "secret" not in streamed.text


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [("GET", "/nope", "not_found"), ("PUT", "/v1/chat/completions", "method_not_allowed")],
)
def test_routing_errors_have_the_same_shape(
    client: TestClient, method: str, path: str, code: str
) -> None:
    assert_openai_error(client.request(method, path), code)


def test_a_validation_error_names_the_field(client: TestClient) -> None:
    error = assert_openai_error(
        client.post("/v1/chat/completions", json=chat(temperature=9)), "invalid_value"
    )
    assert error["param"] == "temperature"


# --- the OpenAPI document --------------------------------------------------------------------


def test_the_openapi_document_describes_every_answer(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    op = doc["paths"]["/v1/chat/completions"]["post"]
    assert {"400", "401", "404", "413", "429", "503", "504"} <= set(op["responses"])
    assert "rate_limit_exceeded" in op["responses"]["429"]["description"]
    assert "requestBody" in op


# --- the token -----------------------------------------------------------------------------


def test_a_token_on_the_command_line_is_refused() -> None:
    args = build_parser().parse_args(["--token", "s3cret"])
    with pytest.raises(ConfigurationError, match="token-file") as info:
        read_token(args)
    assert "s3cret" not in str(info.value)


def test_the_token_is_read_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "token"
    path.write_text("from-file\n")
    monkeypatch.setenv("COREASON_SERVE_TOKEN", "from-env")
    assert read_token(build_parser().parse_args(["--token-file", str(path)])) == "from-file"
    assert read_token(build_parser().parse_args([])) == "from-env"
    path.write_text("")
    with pytest.raises(ConfigurationError, match="empty"):
        read_token(build_parser().parse_args(["--token-file", str(path)]))


def test_the_limits_come_from_the_options() -> None:
    args = build_parser().parse_args(["--max-body", "2048", "--queue", "3", "--timeout", "9"])
    assert read_limits(args) == ServeLimits(max_body_bytes=2048, max_queue=3, request_timeout=9.0)
    with pytest.raises(ConfigurationError):
        read_limits(build_parser().parse_args(["--queue", "0"]))


def test_the_host_refuses_work_over_its_queue_bound() -> None:
    from coreason_runtime import ServerBusyError
    from coreason_runtime.serve._host import ModelHost

    host = ModelHost(Backend(), MODEL, max_queue=1)
    release = threading.Event()

    async def main() -> None:
        first = host.submit(release.wait, 10)
        with pytest.raises(ServerBusyError) as info:
            host.submit(release.wait, 10)
        assert info.value.retry_after >= 1
        release.set()
        await first

    try:
        asyncio.run(main())
    finally:
        host.close()
    assert host.waiting == 0


def test_prompts_are_counted_on_a_low_priority_thread() -> None:
    import os

    from coreason_runtime.serve._limits import low_priority_worker

    worker = low_priority_worker()
    try:
        nice = worker.submit(lambda: os.getpriority(os.PRIO_PROCESS, 0)).result(10)
    finally:
        worker.shutdown()
    assert nice >= min(os.getpriority(os.PRIO_PROCESS, 0) + 10, 19)

"""`coreason serve` as a client sees it: a real subprocess on 127.0.0.1 over a tiny Llama."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from typing import Any

import httpx
import jsonschema
import pytest

from tests._fixtures.serve import ServeProcess

pytestmark = pytest.mark.serve

SMALL = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]}},
    "required": ["ok", "color"],
    "additionalProperties": False,
}


def client(server: ServeProcess, token: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=server.url,
        timeout=60.0,
        headers={"Authorization": f"Bearer {token or server.token}"},
    )


def chat(**extra: Any) -> dict[str, Any]:
    # "default" names whatever the server serves (the oracle tier's default model name)
    body: dict[str, Any] = {"model": "default", "messages": [{"role": "user", "content": "Hello"}]}
    body.update(extra)
    return body


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}


def sse_events(response: httpx.Response) -> list[str]:
    lines = response.iter_lines()
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


# --- health, models, auth ------------------------------------------------------------------


def test_health_said_loading_while_the_model_loaded_then_ok(serve_process: ServeProcess) -> None:
    assert serve_process.states_seen[0] == "loading"
    assert serve_process.states_seen[-1] == "ok"


def test_health_needs_no_token(serve_process: ServeProcess) -> None:
    r = httpx.get(f"{serve_process.url}/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


def test_models_lists_the_served_model(serve_process: ServeProcess) -> None:
    with client(serve_process) as c:
        data = c.get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == [serve_process.model]


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}]
)
def test_requests_without_the_right_token_get_401_with_an_openai_error(
    serve_process: ServeProcess,
    headers: dict[str, str],
) -> None:
    r = httpx.post(f"{serve_process.base_url}/chat/completions", json=chat(), headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert serve_process.token not in r.text


# --- completions ---------------------------------------------------------------------------


def test_completion_returns_text_and_usage(serve_process: ServeProcess) -> None:
    with client(serve_process) as c:
        body = c.post("/v1/chat/completions", json=chat(max_tokens=6)).json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(body["choices"][0]["message"]["content"], str)
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert 1 <= usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_max_completion_tokens_caps_the_output(serve_process: ServeProcess) -> None:
    with client(serve_process) as c:
        body = c.post(
            "/v1/chat/completions", json=chat(max_completion_tokens=3, max_tokens=50)
        ).json()
    assert body["usage"]["completion_tokens"] <= 3


def test_seed_reproduces_a_sampled_completion(serve_process: ServeProcess) -> None:
    with client(serve_process) as c:
        texts = [
            c.post(
                "/v1/chat/completions", json=chat(max_tokens=8, temperature=1.0, seed=seed)
            ).json()["choices"][0]["message"]["content"]
            for seed in (11, 11, 12)
        ]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


def test_json_schema_response_is_valid_json_for_the_schema(serve_process: ServeProcess) -> None:
    with client(serve_process) as c:
        body = c.post(
            "/v1/chat/completions",
            json=chat(max_tokens=40, temperature=1.0, seed=3, response_format=strict(SMALL)),
        ).json()
    text = body["choices"][0]["message"]["content"]
    jsonschema.validate(json.loads(text), SMALL)
    assert body["choices"][0]["finish_reason"] == "stop"


def test_json_object_response_is_a_json_object(serve_process: ServeProcess) -> None:
    with client(serve_process) as c:
        body = c.post(
            "/v1/chat/completions",
            json=chat(max_tokens=12, seed=1, response_format={"type": "json_object"}),
        ).json()
    text = body["choices"][0]["message"]["content"]
    if body["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # cut at max_tokens: still a prefix of an object
        assert text.startswith("{")


# --- streaming -----------------------------------------------------------------------------


def test_stream_sends_role_content_finish_usage_then_done(serve_process: ServeProcess) -> None:
    payload = chat(
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
        response_format=strict(SMALL),
        seed=5,
    )
    with client(serve_process) as c, c.stream("POST", "/v1/chat/completions", json=payload) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [ch["choices"][0]["delta"].get("content") for ch in chunks[1:-2]]
    assert len(content) > 2  # token by token, not one blob
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    jsonschema.validate(json.loads("".join(content)), SMALL)
    assert chunks[-1]["usage"]["completion_tokens"] >= len(content)
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)


def test_stream_without_include_usage_sends_no_usage(serve_process: ServeProcess) -> None:
    with (
        client(serve_process) as c,
        c.stream("POST", "/v1/chat/completions", json=chat(max_tokens=4, stream=True)) as r,
    ):
        events = sse_events(r)
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in ch for ch in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_stream_with_continuous_usage_counts_every_chunk(serve_process: ServeProcess) -> None:
    payload = chat(
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        response_format=strict(SMALL),
        seed=5,
    )
    with client(serve_process) as c, c.stream("POST", "/v1/chat/completions", json=payload) as r:
        events = sse_events(r)
    chunks = [json.loads(e) for e in events[:-1]]
    counted = [ch["usage"] for ch in chunks[1:-1] if ch["choices"][0]["delta"].get("content")]
    final = chunks[-1]["usage"]
    assert len(counted) > 2
    outs = [u["completion_tokens"] for u in counted]
    assert outs == sorted(outs) and outs[0] > 0  # running counts, growing with the text
    assert all(u["prompt_tokens"] == final["prompt_tokens"] > 0 for u in counted)
    assert chunks[-2]["usage"] == final  # the finish chunk counts what the final usage does
    assert final["completion_tokens"] >= outs[-1] - 1  # the end-of-sequence token aside


def test_client_hanging_up_mid_stream_stops_decoding(serve_process: ServeProcess) -> None:
    before = serve_process.health()["cancelled"]
    assert isinstance(before, int)
    with (
        client(serve_process) as c,
        c.stream(
            "POST",
            "/v1/chat/completions",
            json=chat(max_tokens=4000, stream=True, seed=2),
        ) as r,
    ):
        lines = r.iter_lines()
        received = [line for line, _ in zip(lines, range(6), strict=False) if line]
    assert len(received) >= 2
    deadline = time.monotonic() + 60
    while serve_process.health()["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.1)
    health = serve_process.health()
    assert health["cancelled"] == before + 1


def test_client_giving_up_on_a_long_completion_stops_decoding(
    serve_process: ServeProcess,
) -> None:
    before = serve_process.health()["cancelled"]
    assert isinstance(before, int)
    with client(serve_process) as c, pytest.raises(httpx.ReadTimeout):
        c.post("/v1/chat/completions", json=chat(max_tokens=4000, seed=3), timeout=1.0)
    deadline = time.monotonic() + 60
    while serve_process.health()["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert serve_process.health()["cancelled"] == before + 1


def test_concurrent_clients_share_the_model_and_all_get_valid_answers(
    serve_process: ServeProcess,
) -> None:
    seeds = range(4)
    start = threading.Barrier(len(seeds))

    def ask(seed: int, *, together: bool = False) -> tuple[str, Any]:
        with client(serve_process) as c:
            if together:
                start.wait(timeout=30)  # every client sends at once
            body = c.post(
                "/v1/chat/completions",
                json=chat(max_tokens=40, seed=seed, temperature=1.0, response_format=strict(SMALL)),
            ).json()
        return body["model"], json.loads(body["choices"][0]["message"]["content"])

    served = serve_process.health()["served"]
    alone = [ask(seed) for seed in seeds]
    # the seeds sample different answers, so a reply sent to the wrong client would show
    assert len({json.dumps(answer, sort_keys=True) for _, answer in alone}) > 1
    with concurrent.futures.ThreadPoolExecutor(len(seeds)) as pool:
        together = list(pool.map(lambda seed: ask(seed, together=True), seeds))
    # one model served every client (no per-request copy, no state leaking between the
    # requests): each concurrent client got exactly the answer its seed gets when alone
    assert together == alone
    assert {model for model, _ in together} == {serve_process.model}
    for _, answer in together:
        jsonschema.validate(answer, SMALL)
    health = serve_process.health()
    assert (health["served"], health["queued"]) == (served + 2 * len(seeds), 0)


# --- bad input -----------------------------------------------------------------------------


def test_invalid_json_schema_gets_400(serve_process: ServeProcess) -> None:
    with client(serve_process) as c:
        r = c.post(
            "/v1/chat/completions", json=chat(response_format=strict({"type": "not-a-type"}))
        )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_schema"


@pytest.mark.parametrize(
    "bad",
    [
        {"messages": []},
        {"n": 2},
        {"max_tokens": 0},
        {"temperature": -1},
        {"response_format": {"type": "yaml"}},
        {"stop": ["\n"]},
        {"tools": [{"type": "function"}]},
        {"seed": 2**64},
    ],
)
def test_malformed_requests_get_400_with_an_openai_error(
    serve_process: ServeProcess,
    bad: dict[str, Any],
) -> None:
    with client(serve_process) as c:
        r = c.post("/v1/chat/completions", json=chat(**bad))
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


# --- hostile input (issue: bounded inputs) ------------------------------------------------------


def test_a_lone_surrogate_gets_400_and_the_connection_keeps_serving(
    serve_process: ServeProcess,
) -> None:
    raw = b'{"messages": [{"role": "user", "content": "a\\ud800b"}], "max_tokens": 2}'
    with client(serve_process) as c:
        bad = c.post(
            "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
        )
        streamed = c.post(
            "/v1/chat/completions",
            content=raw.replace(b'"max_tokens"', b'"stream": true, "max_tokens"'),
            headers={"content-type": "application/json"},
        )
        good = c.post("/v1/chat/completions", json=chat(max_tokens=2))  # same connection
    for r in (bad, streamed):
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_unicode"
    assert good.status_code == 200
    assert "Traceback" not in serve_process.log.read_text()


def test_a_self_referential_ref_is_an_invalid_schema(serve_process: ServeProcess) -> None:
    with client(serve_process) as c:
        r = c.post("/v1/chat/completions", json=chat(response_format=strict({"$ref": "#"})))
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "invalid_schema"
    assert len(error["message"]) < 300 and "<state>" not in error["message"]


def test_an_unknown_model_gets_404(serve_process: ServeProcess) -> None:
    with client(serve_process) as c:
        r = c.post("/v1/chat/completions", json={**chat(), "model": "gpt-nope"})
        served = c.post(
            "/v1/chat/completions", json={**chat(max_tokens=2), "model": serve_process.model}
        )
    assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")
    assert served.status_code == 200


def test_a_prompt_longer_than_the_context_is_refused_at_once(serve_process: ServeProcess) -> None:
    started = time.monotonic()
    with client(serve_process) as c:
        long = [{"role": "user", "content": "word " * 9000}]
        r = c.post("/v1/chat/completions", json=chat(messages=long, max_tokens=2))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    health = serve_process.health()
    assert health["queued"] == 0
    assert time.monotonic() - started < 30  # refused before the model: no prefill ran


def test_the_openapi_document_is_served(serve_process: ServeProcess) -> None:
    doc = httpx.get(f"{serve_process.url}/openapi.json").json()
    assert {"/health", "/v1/models", "/v1/chat/completions"} <= set(doc["paths"])

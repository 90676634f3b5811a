"""The oracle tier against real loopback servers: a faulty one built here and `coreason serve`."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import traceback
from typing import Any

import pytest
from coreason_runtime import (
    AuthenticationError,
    BudgetExceededError,
    EventBus,
    EventType,
    OracleConfig,
    OracleSchemaLimitError,
    ProtocolError,
    RateLimitError,
    TierTimeoutError,
    TierUnavailableError,
)
from coreason_runtime.budget import BudgetCage
from coreason_runtime.events import TokensBatch
from coreason_runtime.tensor import CompiledSchema, SchemaSpec, TierRequest, UnmeteredMeter
from coreason_runtime.tensor._compiler import UniversalCompiler
from coreason_runtime.tensor._remote import RemoteTier

from tests._fixtures.serve import ServeProcess
from tests._fixtures.servers import free_port
from tests.runtime.tensor._faulty_server import running

KEY = "sk-coreason-test-9f8e7d6c5b4a39281706"

ANSWER = {
    "type": "object",
    "properties": {"value": {"type": "integer"}, "unit": {"type": "string"}},
    "required": ["value", "unit"],
    "additionalProperties": False,
}


def compiled(schema: dict[str, Any] = ANSWER) -> CompiledSchema:
    spec = SchemaSpec.from_user(schema)
    return CompiledSchema(
        spec=spec,
        openai={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        },
    )


def request(schema: CompiledSchema | None = None, **kw: Any) -> TierRequest:
    fields: dict[str, Any] = {"max_tokens": 64, "workflow_id": "wf-oracle", "timeout": 10.0}
    fields.update(kw)
    return TierRequest(
        messages=[{"role": "user", "content": "Give 3 metres as JSON."}],
        schema=schema or compiled(),
        **fields,
    )


def tier_for(base_url: str, **kw: Any) -> RemoteTier:
    return RemoteTier(OracleConfig(base_url=base_url, model="oracle-model", api_key=KEY), **kw)


# --- a well-behaved stream -----------------------------------------------------------------


def test_stream_is_metered_per_chunk_and_trued_up_to_usage() -> None:
    with running("ok", tokens=6, prompt_tokens=11) as server:
        meter = UnmeteredMeter()
        out = tier_for(server.base_url).complete(request(), meter)
    assert out.text == "w0 w1 w2 w3 w4 w5 "
    assert (out.tokens_in, out.tokens_out) == (11, 6)
    assert (meter.tokens_in, meter.tokens_out) == (11, 6)
    assert out.finish_reason == "stop"


def test_streamed_tokens_are_published_as_typed_batches_with_their_text() -> None:
    bus = EventBus()
    with running("ok", tokens=40, prompt_tokens=11) as server:
        out = tier_for(server.base_url, bus=bus).complete(request(), UnmeteredMeter())
    batches = [e.data for e in bus.history([EventType.TOKENS])]
    assert all(isinstance(b, TokensBatch) and b.tier == "oracle" for b in batches)
    assert [b.tokens_out for b in batches] == [16, 16, 8]  # every 16 tokens, then the rest
    assert [b.total_out for b in batches] == [16, 32, 40] and out.tokens_out == 40
    assert "".join(b.delta for b in batches) == out.text


def test_request_carries_strict_schema_streaming_and_usage_options() -> None:
    with running("ok") as server:
        tier_for(server.base_url).complete(request(seed=5, max_tokens=40), UnmeteredMeter())
        sent = server.received[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["response_format"]["json_schema"]["strict"] is True
    assert sent.body["response_format"]["json_schema"]["schema"] == ANSWER
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert sent.body["max_completion_tokens"] == 40
    assert sent.body["seed"] == 5
    assert sent.body["model"] == "oracle-model"


def test_max_tokens_is_capped_by_what_the_meter_still_allows() -> None:
    with running("ok") as server:
        tier_for(server.base_url).complete(request(max_tokens=500), UnmeteredMeter(max_out=9))
        sent = server.received[0]
    assert sent.body["max_completion_tokens"] == 9


def test_token_counter_charges_lower_bounds_then_trues_up() -> None:
    with running("ok", tokens=4) as server:
        meter = UnmeteredMeter()
        # Each "wN " fragment is one word: the cumulative count less one never overshoots.
        out = tier_for(server.base_url, token_counter=lambda t: len(t.split())).complete(
            request(), meter
        )
    assert meter.tokens_out == out.tokens_out == 4


def test_usage_on_every_chunk_meters_each_chunk_exactly() -> None:
    meter = CountingMeter()
    with running("ok", tokens=12, words_per_chunk=4, continuous=True) as server:
        out = tier_for(server.base_url).complete(request(), meter)
    assert [n for _, n in meter.charges if n] == [4, 4, 4]
    assert (meter.tokens_in, meter.tokens_out) == (out.tokens_in, out.tokens_out) == (7, 12)


def test_a_server_refusing_usage_per_chunk_is_asked_again_without_it_and_never_again() -> None:
    with running("ok", tokens=3, strict_options=True) as server:
        tier = tier_for(server.base_url)
        first = tier.complete(request(), UnmeteredMeter())
        second = tier.complete(request(), UnmeteredMeter())
        options = [r.body["stream_options"] for r in server.received]
    assert first.text == second.text == "w0 w1 w2 "
    assert options == [
        {"include_usage": True, "continuous_usage_stats": True},
        {"include_usage": True},
        {"include_usage": True},
    ]


def test_chunks_without_usage_are_counted_with_the_tokenizer() -> None:
    meter = CountingMeter()
    with running("ok", tokens=12, words_per_chunk=4) as server:
        tier = tier_for(server.base_url, token_counter=lambda t: len(t.split()))
        out = tier.complete(request(), meter)
    # the count of all text so far, less one (a last token may still grow), then the usage
    assert [n for _, n in meter.charges if n] == [3, 4, 4]
    assert meter.tokens_out == out.tokens_out == 12


def test_a_tokenizer_that_cannot_count_falls_back_to_one_per_chunk() -> None:
    meter = CountingMeter()
    with running("ok", tokens=8, words_per_chunk=4) as server:
        out = tier_for(server.base_url, token_counter=lambda t: None).complete(request(), meter)
    assert [n for _, n in meter.charges if n] == [1, 1]
    assert meter.tokens_out == out.tokens_out == 8


def test_the_final_charge_equals_the_servers_usage_even_below_the_estimate() -> None:
    cage = BudgetCage()
    cage.set("wf-oracle", ceiling=10_000)
    with running("ok", tokens=12, words_per_chunk=4, reported_out=10) as server:
        tier = tier_for(server.base_url, token_counter=lambda t: len(t.split()))
        lease = cage.open("wf-oracle", 7, 64, "oracle")
        out = tier.complete(request(), lease)
        lease.settle()
    assert out.tokens_out == 10
    assert cage.spent("wf-oracle") == 7 + 3 * 10


@pytest.mark.parametrize("continuous", [True, False])
def test_a_budget_cut_off_lands_within_one_chunk_of_the_ceiling(continuous: bool) -> None:
    cage = BudgetCage()
    cage.set("wf-oracle", ceiling=7 + 3 * 10)  # the prompt and 10 output tokens
    counter = None if continuous else (lambda t: len(t.split()))
    with running("ok", tokens=40, words_per_chunk=4, continuous=continuous) as server:
        lease = cage.open("wf-oracle", 7, 64, "oracle")
        with pytest.raises(BudgetExceededError):
            tier_for(server.base_url, token_counter=counter).complete(request(), lease)
        lease.settle()
    # cut within one chunk (4 tokens, C=12) of Ω; a prompt the server never reported (no usage
    # chunk arrived) is not charged, so the cut may land below Ω
    assert abs(cage.spent("wf-oracle") - (7 + 3 * 10)) <= 3 * 4
    assert 10 - 4 < cage.get("wf-oracle").tokens_out <= 10 + 4


# --- schema limits -------------------------------------------------------------------------


def test_schema_without_a_strict_form_raises_the_compilers_error_before_any_request() -> None:
    spec = SchemaSpec.from_user(ANSWER)
    limit = OracleSchemaLimitError("too many properties for strict mode")
    schema = CompiledSchema(spec=spec, openai=None, errors={"openai": limit})
    with running("ok") as server:
        with pytest.raises(OracleSchemaLimitError) as info:
            tier_for(server.base_url).complete(request(schema), UnmeteredMeter())
        assert server.received == []
    assert info.value is limit


# --- failures, each typed, each charged exactly what arrived -------------------------------


def test_unreachable_server_raises_tier_unavailable_and_charges_nothing() -> None:
    meter = UnmeteredMeter()
    with pytest.raises(TierUnavailableError):
        tier_for(f"http://127.0.0.1:{free_port()}/v1").complete(request(), meter)
    assert (meter.tokens_in, meter.tokens_out) == (0, 0)


def test_401_raises_authentication_error() -> None:
    meter = UnmeteredMeter()
    with running("unauthorized") as server, pytest.raises(AuthenticationError) as info:
        tier_for(server.base_url).complete(request(), meter)
    assert "401" in str(info.value)
    assert (meter.tokens_in, meter.tokens_out) == (0, 0)


def test_403_raises_authentication_error() -> None:
    with running("forbidden") as server, pytest.raises(AuthenticationError):
        tier_for(server.base_url).complete(request(), UnmeteredMeter())


def test_429_then_200_waits_retry_after_and_succeeds() -> None:
    slept: list[float] = []  # the wait asked for is what matters; sleeping it proves nothing

    with running("rate_limited", fail_first=1, retry_after="1") as server:
        meter = UnmeteredMeter()
        out = tier_for(server.base_url, sleep=slept.append).complete(request(), meter)
        requests_made = len(server.received)
    assert slept == [1.0]
    assert requests_made == 2
    assert out.tokens_out == meter.tokens_out == 5


def test_persistent_429_raises_rate_limit_error_after_bounded_attempts() -> None:
    with running("rate_limited", fail_first=100, retry_after="0") as server:
        with pytest.raises(RateLimitError) as info:
            tier_for(server.base_url, rate_limit_attempts=3).complete(request(), UnmeteredMeter())
        requests_made = len(server.received)
    assert requests_made == 3
    assert info.value.retry_after == 0.0


def test_retry_after_beyond_the_bound_fails_at_once() -> None:
    with running("rate_limited", fail_first=100, retry_after="120") as server:
        with pytest.raises(RateLimitError) as info:
            tier_for(server.base_url, max_retry_wait=5.0).complete(request(), UnmeteredMeter())
        requests_made = len(server.received)
    assert requests_made == 1
    assert info.value.retry_after == 120.0


def test_malformed_sse_raises_protocol_error_after_charging_the_good_chunks() -> None:
    meter = UnmeteredMeter()
    with running("malformed", tokens=3) as server, pytest.raises(ProtocolError):
        tier_for(server.base_url).complete(request(), meter)
    assert (meter.tokens_in, meter.tokens_out) == (0, 3)


def test_connection_cut_mid_body_raises_protocol_error_charging_what_arrived() -> None:
    meter = UnmeteredMeter()
    with running("cut", tokens=4) as server, pytest.raises(ProtocolError):
        tier_for(server.base_url).complete(request(), meter)
    assert meter.tokens_out == 4


def test_stream_ending_without_finish_reason_raises_protocol_error() -> None:
    meter = UnmeteredMeter()
    with running("no_finish", tokens=2) as server, pytest.raises(ProtocolError, match="cut off"):
        tier_for(server.base_url).complete(request(), meter)
    assert meter.tokens_out == 2


def test_stalled_stream_raises_tier_timeout() -> None:
    meter = UnmeteredMeter()
    with running("stall", tokens=2) as server, pytest.raises(TierTimeoutError):
        tier_for(server.base_url).complete(request(timeout=0.5), meter)
    assert meter.tokens_out == 2


def test_budget_ceiling_closes_the_stream_within_one_chunk() -> None:
    cage = BudgetCage()
    cage.set("wf-oracle", 12)  # C = 3 per output token: four chunks fit, the fifth crosses
    with running("ok", tokens=200) as server:
        reservation = cage.open("wf-oracle", 0, 64, "oracle")
        with pytest.raises(BudgetExceededError):
            tier_for(server.base_url).complete(request(), reservation)
        reservation.settle()
    assert reservation.tokens_out == 5
    assert cage.spent("wf-oracle") == 15


def test_threads_starting_at_once_share_one_http_client() -> None:
    tier = tier_for("http://127.0.0.1:9/v1")
    barrier = threading.Barrier(8)

    def build() -> object:
        barrier.wait()
        return tier._openai()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        clients = list(pool.map(lambda _: build(), range(8)))
    tier.close()
    assert len({id(c) for c in clients}) == 1


# --- the key -------------------------------------------------------------------------------


def test_key_never_appears_in_errors_events_logs_or_reprs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    seen: list[str] = []
    caplog.set_level(logging.DEBUG)
    config = OracleConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key=KEY)
    seen += [repr(config), str(config)]
    for mode in ("unauthorized", "malformed", "cut", "rate_limited"):
        with running(mode, fail_first=100, retry_after="0") as server:
            tier = tier_for(server.base_url, bus=bus, rate_limit_attempts=2)
            seen.append(repr(tier))
            with pytest.raises(Exception) as info:
                tier.complete(request(), UnmeteredMeter())
            seen.append("".join(traceback.format_exception(info.value)))
            seen.append(repr(info.value))
            seen += [repr(vars(e)) for e in _chain(info.value)]
            assert server.received[0].headers["authorization"] == f"Bearer {KEY}"
    seen += [e.model_dump_json() for e in bus.history()]
    seen += [caplog.text] + [json.dumps(r.__dict__, default=str) for r in caplog.records]
    assert len(seen) > 10
    leaks = [s for s in seen if KEY in s]
    assert leaks == []


def _chain(e: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def test_oracle_config_reads_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COREASON_ORACLE_BASE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.setenv("COREASON_ORACLE_MODEL", "env-model")
    monkeypatch.setenv("COREASON_ORACLE_API_KEY", KEY)
    tier = RemoteTier.from_env()
    assert tier is not None
    assert (tier.config.base_url, tier.model, tier.config.api_key) == (
        "http://127.0.0.1:1/v1",
        "env-model",
        KEY,
    )
    assert KEY not in repr(tier)


def test_no_key_configured_never_sends_openai_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with running("ok") as server:
        RemoteTier(OracleConfig(base_url=server.base_url, model="m")).complete(
            request(), UnmeteredMeter()
        )
        sent = server.received[0]
    assert KEY not in sent.headers.get("authorization", "")


# --- against a real `coreason serve` -------------------------------------------------------


class CountingMeter(UnmeteredMeter):
    """Records every charge, to see the stream metered chunk by chunk."""

    def __init__(self) -> None:
        super().__init__()
        self.charges: list[tuple[int, int]] = []

    def charge(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        self.charges.append((tokens_in, tokens_out))
        super().charge(tokens_in, tokens_out)


SMALL = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]}},
    "required": ["ok", "color"],
    "additionalProperties": False,
}


def served_tier(server: ServeProcess, key: str | None = None) -> RemoteTier:
    return RemoteTier(
        OracleConfig(base_url=server.base_url, model=server.model, api_key=key or server.token)
    )


@pytest.mark.serve
def test_oracle_over_coreason_serve_streams_strict_json_with_exact_usage(
    serve_process: ServeProcess,
) -> None:
    schema = UniversalCompiler().compile(SchemaSpec.from_user(SMALL))
    assert schema.openai is not None and schema.openai["json_schema"]["strict"] is True
    meter = CountingMeter()
    tier = served_tier(serve_process)
    out = tier.complete(request(schema, max_tokens=40, temperature=1.0, seed=4), meter)
    tier.close()
    assert schema.validate_text(out.text) is not None
    assert out.finish_reason == "stop"
    assert len([c for c in meter.charges if c[1]]) > 2  # charged as the chunks arrived
    assert (meter.tokens_in, meter.tokens_out) == (out.tokens_in, out.tokens_out)
    assert out.tokens_in > 0 and out.extra["usage_reported"] is True


@pytest.mark.serve
def test_oracle_with_a_wrong_key_is_refused_by_coreason_serve(
    serve_process: ServeProcess,
) -> None:
    with pytest.raises(AuthenticationError) as info:
        served_tier(serve_process, key=KEY).complete(request(compiled(SMALL)), UnmeteredMeter())
    assert KEY not in "".join(traceback.format_exception(info.value))


@pytest.mark.serve
def test_ledger_matches_coreason_serves_usage_exactly(serve_process: ServeProcess) -> None:
    cage = BudgetCage()
    cage.set("wf-oracle", 10_000)
    tier = served_tier(serve_process)
    req = request(compiled(SMALL), max_tokens=40, temperature=1.0, seed=9)
    reservation = cage.open("wf-oracle", tier.count_prompt(req.messages), 40, "oracle")
    out = tier.complete(req, reservation)
    reservation.settle()
    assert cage.spent("wf-oracle") == out.tokens_in + 3 * out.tokens_out
    assert out.tokens_in > 0 and out.tokens_out > 0


@pytest.mark.serve
@pytest.mark.model
def test_oracle_over_real_smollm2_answers_valid_json(serve_real: ServeProcess) -> None:
    answer = {
        "type": "object",
        "properties": {"sum": {"type": "integer"}},
        "required": ["sum"],
        "additionalProperties": False,
    }
    schema = UniversalCompiler().compile(SchemaSpec.from_user(answer))
    meter = UnmeteredMeter()
    out = served_tier(serve_real).complete(
        TierRequest(
            messages=[{"role": "user", "content": "What is 2 + 3? Answer in JSON."}],
            schema=schema,
            max_tokens=12,
            workflow_id="wf-real",
            timeout=120.0,
        ),
        meter,
    )
    value = schema.validate_text(out.text)
    assert isinstance(value["sum"], int)
    assert (meter.tokens_in, meter.tokens_out) == (out.tokens_in, out.tokens_out)

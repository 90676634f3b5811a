"""The remote oracle tier: an OpenAI-compatible server, streamed and metered chunk by chunk."""

from __future__ import annotations

import email.utils
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import tenacity

from coreason_runtime._config import OracleConfig
from coreason_runtime._events import EventType
from coreason_runtime._exceptions import (
    AuthenticationError,
    BudgetExceededError,
    ConfigurationError,
    CoreasonError,
    MissingExtraError,
    OracleSchemaLimitError,
    ProtocolError,
    RateLimitError,
    TierError,
    TierTimeoutError,
    TierUnavailableError,
)
from coreason_runtime._redact import redact_exception, redact_text, secret_values
from coreason_runtime.tensor._cutoff import CloseOnAbort
from coreason_runtime.tensor._types import (
    BlackBoxTier,
    Messages,
    Meter,
    TierOutput,
    TierRequest,
)
from coreason_runtime.tensor._usage import StreamMeter, TokenCounter, TokenizerCounter

if TYPE_CHECKING:
    from openai import OpenAI, Stream
    from openai.types.chat import ChatCompletionChunk

    from coreason_runtime._coordinator import Coordinator
    from coreason_runtime._events import EventBus
    from coreason_runtime.tensor._schema import CompiledSchema

__all__ = ["RemoteTier"]

logger = logging.getLogger("coreason_runtime.tensor.remote")

# Sent when no key is configured, so the SDK never falls back to $OPENAI_API_KEY and leaks a
# real OpenAI key to whatever server base_url names.
_NO_KEY = "coreason-no-key"
_TOKENS_EVENT_EVERY = 16


class RemoteTier(BlackBoxTier):
    """A black-box tier behind an OpenAI-compatible ``/v1/chat/completions``.

    The schema goes out as a strict ``response_format`` (``request.schema.openai``, built by the
    compiler); the answer streams back and is metered as it arrives: each content chunk is
    charged with ``meter.charge(tokens_out=n)`` before it is kept, the prompt tokens when the
    server reports them. ``n`` is exact when the server sends usage on every chunk (asked for
    with ``stream_options.continuous_usage_stats``; a server that rejects the option is asked
    again without it, and never again); otherwise a lower bound: with ``token_counter`` the
    growth of the count of all text so far less one (the last token may still be growing),
    else 1 per chunk. The final ``usage`` replaces the estimates (``meter.correct``), so the
    charge equals the server's count. When the meter raises :class:`BudgetExceededError` the
    HTTP stream is closed at once, so the cut-off lands within one chunk of the ceiling. Only
    what really arrived is ever charged.

    Parameters
    ----------
    config:
        Where the server is, which model, the key (never shown anywhere) and the timeout.
    bus:
        Where ``tokens.batch`` and rate-limit ``runtime.log`` events go; optional.
    token_counter:
        Counts the tokens of a text (None when it cannot), for the prompt estimate and for
        chunks that carry no usage; without one such a chunk counts as 1.
    usage_per_chunk:
        Ask the server for usage on every chunk (``continuous_usage_stats``).
    rate_limit_attempts:
        How many requests to make in all while the server answers 429.
    max_retry_wait:
        The longest single wait honoured for ``Retry-After``; a longer one fails at once.
    """

    name = "oracle"

    def __init__(
        self,
        config: OracleConfig,
        bus: EventBus | None = None,
        *,
        token_counter: TokenCounter | None = None,
        usage_per_chunk: bool = True,
        rate_limit_attempts: int = 3,
        max_retry_wait: float = 20.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not config.base_url:
            msg = "the oracle needs a base URL (COREASON_ORACLE_BASE_URL)"
            raise ConfigurationError(msg)
        if rate_limit_attempts < 1 or max_retry_wait < 0:
            msg = "rate_limit_attempts must be >= 1 and max_retry_wait >= 0"
            raise ConfigurationError(msg)
        self.config = config
        self.bus = bus
        self.model = config.model
        self.token_counter = token_counter
        self.usage_per_chunk = usage_per_chunk
        self.rate_limit_attempts = rate_limit_attempts
        self.max_retry_wait = max_retry_wait
        self._sleep = sleep
        self._client: OpenAI | None = None
        # the router calls one tier from many threads: two clients built at once would leave
        # one (and its connection pool) unclosed
        self._client_lock = threading.Lock()

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def from_env(cls, bus: EventBus | None = None) -> RemoteTier | None:
        """The tier configured by ``COREASON_ORACLE_*``, or ``None`` when none is set."""
        config = OracleConfig.from_env()
        return None if config is None else cls(config, bus)

    @classmethod
    def for_runtime(cls, rt: Coordinator) -> RemoteTier | None:
        """The runtime's oracle (``rt.config.oracle``) on ``rt.bus``, or ``None`` if unset.

        Streams without usage per chunk are counted with the tokenizer the config names
        (``COREASON_ORACLE_TOKENIZER``), else the local model's, loaded on first use.
        """
        config = rt.config.oracle
        if config is None:
            return None
        counter = TokenizerCounter(config.tokenizer or rt.config.model)
        return cls(config, rt.bus, token_counter=counter)

    def _openai(self) -> OpenAI:
        with self._client_lock:
            if self._client is None:
                try:
                    import openai
                except ImportError as e:
                    raise MissingExtraError("openai", "oracle") from e
                # Retries are ours (tenacity, Retry-After honoured, bounded); the SDK's are off.
                self._client = openai.OpenAI(
                    api_key=self.config.api_key or _NO_KEY,
                    base_url=self.config.base_url,
                    max_retries=0,
                    timeout=self.config.timeout,
                )
            return self._client

    def close(self) -> None:
        """Release the HTTP connection pool. Idempotent."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __repr__(self) -> str:
        key = "set" if self.config.api_key else "none"
        return f"RemoteTier(base_url={self.config.base_url!r}, model={self.model!r}, key={key})"

    # --- the Tier protocol -------------------------------------------------------------------

    def complete(self, request: TierRequest, meter: Meter) -> TierOutput:
        """Ask the server once (429s retried within bounds) and stream the answer through ``meter``.

        Raises
        ------
        OracleSchemaLimitError
            (or the compiler's own error) when the schema has no strict OpenAI form.
        BudgetExceededError
            From ``meter``; the stream was closed at the chunk that crossed the ceiling.
        AuthenticationError, RateLimitError, TierUnavailableError, ProtocolError,
        TierTimeoutError
            For 401/403, persistent 429, an unreachable server, a malformed or cut stream, and
            a timeout; messages never contain the key.
        """
        response_format = self._response_format(request)
        max_out = min(request.max_tokens, meter.max_out)
        if max_out < 1:
            msg = f"no output tokens left in the reservation (max_out={meter.max_out})"
            raise BudgetExceededError(msg, workflow_id=request.workflow_id, tier=self.name)
        timeout = request.timeout if request.timeout is not None else self.config.timeout
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "response_format": response_format,
            "max_completion_tokens": max_out,
            "temperature": request.temperature,
            "stream": True,
            "stream_options": self._stream_options(),
            "timeout": timeout,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RateLimitError),
            stop=self._stop_rate_limited,
            wait=_wait_retry_after,
            sleep=self._sleep,
            before_sleep=lambda rs: self._log_rate_limited(rs, request),
            reraise=True,
        )
        try:
            stream = retrying(self._open, body, request)
        except RateLimitError as e:
            msg = (
                f"the oracle at {self.config.base_url} still answered 429 after "
                f"{retrying.statistics.get('attempt_number', 1)} request(s); "
                f"retry after {e.retry_after if e.retry_after is not None else 'unknown'}s"
            )
            raise RateLimitError(
                msg, retry_after=e.retry_after, workflow_id=request.workflow_id, tier=self.name
            ) from e
        # The timeout bounds the answer itself; honoured Retry-After waits come before it.
        deadline = time.monotonic() + timeout
        closer = CloseOnAbort(stream)
        with request.ticket.track(closer):
            try:
                return self._consume(stream, request, meter, deadline, timeout)
            except CoreasonError:
                if closer.fired:  # the abort cut the connection: that is what ended it
                    request.ticket.checkpoint()
                raise

    # --- one attempt: opening the stream -----------------------------------------------------

    def _response_format(self, request: TierRequest) -> dict[str, Any]:
        compiled = request.schema
        if compiled.openai is None:
            err = compiled.errors.get("openai")
            if err is None:
                msg = f"schema {compiled.spec.name!r} has no strict OpenAI form"
                err = OracleSchemaLimitError(msg, workflow_id=request.workflow_id, tier=self.name)
            raise err
        if compiled.openai.get("type") == "json_schema":
            return compiled.openai
        return {"type": "json_schema", "json_schema": compiled.openai}

    def _stream_options(self) -> dict[str, bool]:
        if self.usage_per_chunk:
            return {"include_usage": True, "continuous_usage_stats": True}
        return {"include_usage": True}

    def _open(self, body: dict[str, Any], request: TierRequest) -> Stream[ChatCompletionChunk]:
        import openai

        try:
            return self._openai().chat.completions.create(**body)  # type: ignore[no-any-return]
        except openai.BadRequestError as e:
            if not (self.usage_per_chunk and _rejects_usage_per_chunk(e)):
                raise self._translate(e, request, started=False) from self._scrubbed(e)
            # a strict server (OpenAI's own) refuses vLLM's option: count chunks instead
            logger.info("the oracle refused continuous_usage_stats; counting chunks instead")
            self.usage_per_chunk = False
            return self._open({**body, "stream_options": self._stream_options()}, request)
        except openai.APIError as e:
            raise self._translate(e, request, started=False) from self._scrubbed(e)

    def _stop_rate_limited(self, rs: tenacity.RetryCallState) -> bool:
        if rs.attempt_number >= self.rate_limit_attempts:
            return True
        exc = rs.outcome.exception() if rs.outcome is not None else None
        wait = exc.retry_after if isinstance(exc, RateLimitError) else None
        return wait is not None and wait > self.max_retry_wait

    def _log_rate_limited(self, rs: tenacity.RetryCallState, request: TierRequest) -> None:
        wait = rs.next_action.sleep if rs.next_action is not None else 0.0
        logger.info("oracle rate-limited; retrying in %.2fs (attempt %d)", wait, rs.attempt_number)
        if self.bus is not None:
            self.bus.emit(
                EventType.LOG,
                workflow_id=request.workflow_id,
                source="tier.oracle",
                message="rate limited",
                retry_in=wait,
                attempt=rs.attempt_number,
            )

    # --- streaming and metering --------------------------------------------------------------

    def _consume(
        self,
        stream: Stream[ChatCompletionChunk],
        request: TierRequest,
        meter: Meter,
        deadline: float,
        timeout: float,
    ) -> TierOutput:
        metered = StreamMeter(meter, self.token_counter)
        finish: str | None = None
        model = self.model
        unreported = 0  # tokens (and parts[reported:], their text) not yet published
        reported = 0
        chunks = _iter_chunks(stream)
        try:
            while (chunk := self._next_chunk(chunks, request, timeout)) is not None:
                model = chunk.model or model
                choices = chunk.choices or ()
                texts = [c.delta.content if c.delta is not None else None for c in choices]
                # the chunk's usage (continuous usage) counts its text: charged with the text
                unreported += metered.chunk("".join(t for t in texts if t) or None, chunk.usage)
                for choice in choices:
                    finish = choice.finish_reason or finish
                if unreported >= _TOKENS_EVENT_EVERY:
                    self._emit_tokens(request, metered, reported, unreported)
                    unreported, reported = 0, len(metered.parts)
                if time.monotonic() > deadline:
                    msg = f"the oracle did not finish within {timeout:g}s"
                    raise TierTimeoutError(msg, workflow_id=request.workflow_id, tier=self.name)
        finally:
            stream.close()
            if unreported:
                self._emit_tokens(request, metered, reported, unreported)
        if finish is None:
            msg = (
                f"the oracle's stream ended before a finish_reason ({metered.charged_out} output "
                "tokens received): cut off mid-way"
            )
            raise ProtocolError(msg, workflow_id=request.workflow_id, tier=self.name)
        tokens_in, tokens_out = metered.final()
        return TierOutput(
            text="".join(metered.parts),
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            model=model,
            finish_reason=finish,
            extra={"usage_reported": metered.usage_out is not None},
        )

    def _next_chunk(
        self, chunks: Iterator[ChatCompletionChunk], request: TierRequest, timeout: float
    ) -> ChatCompletionChunk | None:
        """The next chunk of the stream, ``None`` at its end; failures become typed errors."""
        import openai

        try:
            return next(chunks)
        except StopIteration:
            return None
        except openai.APITimeoutError as e:
            msg = f"the oracle stalled for more than {timeout:g}s mid-stream"
            raise TierTimeoutError(
                msg, workflow_id=request.workflow_id, tier=self.name
            ) from self._scrubbed(e)
        except openai.APIError as e:
            raise self._translate(e, request, started=True) from self._scrubbed(e)
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            msg = f"malformed stream from the oracle: {self._scrub(str(e))}"
            raise ProtocolError(
                msg, workflow_id=request.workflow_id, tier=self.name
            ) from self._scrubbed(e)

    def count_prompt(self, messages: Messages, compiled: CompiledSchema | None = None) -> int:
        """An estimate of the prompt's tokens (the schema included), for the lease."""
        counts = [self.token_counter(m["content"]) for m in messages] if self.token_counter else []
        if not counts or None in counts:
            return super().count_prompt(messages, compiled)
        base = sum(int(n or 0) + 8 for n in counts)
        if compiled is None or self.token_counter is None:
            return base
        schema = compiled.openai if compiled.openai is not None else compiled.spec.json_schema
        n_schema = self.token_counter(json.dumps(schema, separators=(",", ":")))
        return base + (n_schema or 0) + 16

    @property
    def model_name(self) -> str:
        return self.model

    def _emit_tokens(
        self, request: TierRequest, metered: StreamMeter, since: int, tokens: int
    ) -> None:
        """Publish the text received since part ``since`` and its ``tokens``."""
        if self.bus is not None:
            self.bus.emit(
                EventType.TOKENS,
                workflow_id=request.workflow_id,
                source="tier.oracle",
                tier=self.name,
                delta="".join(metered.parts[since:]),
                tokens_out=tokens,
                total_out=metered.charged_out,
            )

    # --- errors, with the key scrubbed -------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return redact_text(text, secret_values(self.config.api_key))

    def _scrubbed(self, exc: BaseException) -> BaseException:
        """Redact the key from ``exc`` and its causes in place (args, message, body, headers)."""
        return redact_exception(exc, secret_values(self.config.api_key))

    def _translate(self, e: Exception, request: TierRequest, *, started: bool) -> CoreasonError:
        import openai

        fields: dict[str, Any] = {"workflow_id": request.workflow_id, "tier": self.name}
        where = self.config.base_url
        detail = self._scrub(getattr(e, "message", None) or str(e))
        if isinstance(e, openai.APITimeoutError):
            msg = f"the oracle at {where} did not answer in time"
            return TierTimeoutError(msg, **fields)
        if isinstance(e, openai.APIConnectionError):
            if started:
                msg = f"the oracle's stream broke mid-way: {detail} ({_root(e)})"
                return ProtocolError(msg, **fields)
            msg = f"the oracle at {where} is unreachable: {detail} ({_root(e)})"
            return TierUnavailableError(msg, **fields)
        if isinstance(e, openai.APIStatusError):
            status = e.status_code
            if status in (401, 403):
                msg = f"the oracle at {where} refused the credentials (HTTP {status}): {detail}"
                return AuthenticationError(msg, **fields)
            if status == 429:
                retry_after = _retry_after(e.response.headers)
                msg = f"the oracle at {where} is rate-limiting (HTTP 429): {detail}"
                return RateLimitError(msg, retry_after=retry_after, **fields)
            if status >= 500:
                msg = f"the oracle at {where} failed (HTTP {status}): {detail}"
                return TierUnavailableError(msg, retryable=True, **fields)
            msg = f"the oracle at {where} rejected the request (HTTP {status}): {detail}"
            return TierError(msg, **fields)
        if started:
            msg = f"the oracle sent an error mid-stream: {detail}"
            return ProtocolError(msg, **fields)
        msg = f"the oracle request failed: {detail}"
        return TierError(msg, **fields)


def _iter_chunks(stream: Stream[ChatCompletionChunk]) -> Iterator[ChatCompletionChunk]:
    yield from stream


def _root(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    return type(e).__name__


def _rejects_usage_per_chunk(e: Exception) -> bool:
    """Whether a 400 names the usage-per-chunk option (a server that does not know it)."""
    text = str(getattr(e, "message", "") or e)
    return "continuous_usage_stats" in text or "stream_options" in text


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, parsed.timestamp() - time.time())


def _wait_retry_after(rs: tenacity.RetryCallState) -> float:
    exc = rs.outcome.exception() if rs.outcome is not None else None
    wait = exc.retry_after if isinstance(exc, RateLimitError) else None
    if wait is not None:
        return float(wait)
    return float(min(8.0, 0.5 * 2 ** (rs.attempt_number - 1)))

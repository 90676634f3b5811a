"""The one redaction helper, shared by the remote tier, the lab's displays and its comm."""

from __future__ import annotations

import json

import pytest
from coreason_runtime import may_hold_secret, redact
from coreason_runtime._redact import (
    SECRET_KEY,
    SECRET_WORDS,
    redact_exception,
    redact_text,
    secret_values,
)


def test_the_fast_path_words_cover_the_secret_key_pattern() -> None:
    for key in (
        "API_KEY",
        "apiKey",
        "api-key",
        "Authorization",
        "client_secret",
        "PASSWORD",
        "bearer_token",
    ):
        assert SECRET_KEY.search(key) and any(w in key.lower() for w in SECRET_WORDS), key


def test_redact_drops_secret_keys_and_masks_known_values_in_nested_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COREASON_ORACLE_API_KEY", "sk-SECRET")
    data = {"a": ["x sk-SECRET y", ("sk-SECRET",)], "Api-Key": "anything", "n": 3}
    assert redact(data) == {"a": ["x *** y", ("***",)], "n": 3}


def test_extra_secrets_are_masked_besides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COREASON_ORACLE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("COREASON_SERVE_TOKEN", raising=False)
    assert secret_values("k-1", None, "") == ["k-1"]
    assert redact_text("key k-1 here", secret_values("k-1")) == "key *** here"


def test_may_hold_secret_sees_a_value_escaped_in_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COREASON_ORACLE_API_KEY", 'sk-"quoted"')
    text = json.dumps({"msg": 'auth sk-"quoted"'})
    assert may_hold_secret(text)
    assert not may_hold_secret(json.dumps({"msg": "nothing to hide"}))


class _Request:
    def __init__(self) -> None:
        self.headers = {"authorization": "Bearer k-1"}


class _HTTPFailure(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.body = {"error": {"message": message}}
        self.request = _Request()


def test_redact_exception_masks_the_whole_chain_in_place() -> None:
    cause = _HTTPFailure("refused k-1")
    try:
        try:
            raise cause
        except _HTTPFailure as e:
            raise ValueError("wrapped k-1") from e
    except ValueError as outer:
        out = redact_exception(outer, ["k-1"])
    assert out.args == ("wrapped ***",)
    assert cause.args == ("refused ***",) and cause.message == "refused ***"
    assert cause.body == {"error": {"message": "refused ***"}}
    assert cause.request.headers["authorization"] == "Bearer ***"

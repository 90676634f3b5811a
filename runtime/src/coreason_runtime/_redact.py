"""The one redaction helper: keys never reach an error, an event, a log or a notebook."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "REDACTED",
    "SECRET_KEY",
    "SECRET_WORDS",
    "may_hold_secret",
    "redact",
    "redact_exception",
    "redact_text",
    "secret_values",
]

REDACTED = "***"
#: Keys whose values are secrets, whatever the value: dropped from redacted mappings.
SECRET_KEY = re.compile(r"(api[_-]?key|authorization|secret|password|bearer)", re.I)
#: Every spelling :data:`SECRET_KEY` matches, lower-cased: a cheap substring pre-check.
SECRET_WORDS = ("apikey", "api_key", "api-key", "authorization", "secret", "password", "bearer")
_SECRET_ENV = ("COREASON_ORACLE_API_KEY", "OPENAI_API_KEY", "COREASON_SERVE_TOKEN")


def secret_values(*extra: str | None) -> list[str]:
    """The keys set in this process's environment, then the ``extra`` ones that are set."""
    found = [os.environ[v] for v in _SECRET_ENV if os.environ.get(v)]
    return [*found, *(s for s in extra if s and s not in found)]


def redact_text(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every secret value (default: :func:`secret_values`) masked."""
    for secret in secret_values() if secrets is None else secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def redact(value: Any, secrets: Iterable[str] | None = None) -> Any:
    """A copy of ``value`` with secret-looking keys dropped and secret values masked.

    Mappings, lists and tuples are copied recursively and strings masked; anything else is
    returned as it is. ``secrets`` defaults to :func:`secret_values` (read once per call).
    """
    return _redact(value, secret_values() if secrets is None else list(secrets))


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _redact(v, secrets) for k, v in value.items() if not SECRET_KEY.search(str(k))}
    if isinstance(value, list):
        return [_redact(v, secrets) for v in value]
    if isinstance(value, tuple):
        return tuple(_redact(v, secrets) for v in value)
    if isinstance(value, str):
        return redact_text(value, secrets)
    return value


def may_hold_secret(text: str, secrets: Iterable[str] | None = None) -> bool:
    """Whether ``text`` mentions a secret-looking key or a secret value (raw or JSON-escaped).

    ``False`` means :func:`redact` would change nothing in the data ``text`` was serialised
    from (as JSON, or as plain text), so the structural pass can be skipped.
    """
    low = text.lower()  # substring tests: a regex over a large text costs more
    if any(word in low for word in SECRET_WORDS):
        return True
    known = secret_values() if secrets is None else [s for s in secrets if s]
    return any(s in text or json.dumps(s)[1:-1] in text for s in known)


def redact_exception(exc: BaseException, secrets: Iterable[str] | None = None) -> BaseException:
    """Mask secrets in ``exc`` and its causes, in place, and return it.

    Covers the arguments, the ``message``, ``body`` and ``doc`` attributes HTTP clients set,
    and an ``Authorization`` header on the request an exception carries.
    """
    known = secret_values() if secrets is None else [s for s in secrets if s]
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if known:
            cur.args = tuple(_redact(a, known) if isinstance(a, str) else a for a in cur.args)
            for attr in ("message", "body", "doc"):
                value = getattr(cur, attr, None)
                if isinstance(value, (str, dict)):
                    setattr(cur, attr, _redact(value, known))
        request = getattr(cur, "request", None)
        headers = getattr(request, "headers", None)
        if headers is not None and "authorization" in headers:
            headers["authorization"] = f"Bearer {REDACTED}"
        cur = cur.__cause__ or cur.__context__
    return exc

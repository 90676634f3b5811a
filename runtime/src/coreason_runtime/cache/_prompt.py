"""Canonical keys for model requests: the math in a prompt is canonicalised, the rest normalised."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import sympy

from coreason_runtime._exceptions import CacheError, ExpressionTooLargeError
from coreason_runtime.cache._canonical import canonicalize
from coreason_runtime.cache._normal import evaluated
from coreason_runtime.cache._parse import DEFAULT_LIMITS, Limits, safe_parse

__all__ = ["PromptForm", "canonical_prompt", "detect_op", "map_value_json", "math_leaves"]

_OP_CHARS = "+-*/^=()"
_TRAILING = ".,;:?!"
_MAX_PROMPT_CHARS = 20_000
# Symbols must look like mathematics: x, y1, a_2, alpha; multi-letter words are prose.
_SYMBOL_NAME = re.compile(
    r"^(?:[A-Za-z](?:_?\d+)?|alpha|beta|gamma|delta|epsilon|theta|lambda_|mu|nu|omega|phi|psi"
    r"|rho|sigma|tau|xi|zeta|eta|chi|kappa)$"
)
_OPS = (
    ("integrate", ("integrate", "integral", "antiderivative", "∫")),
    ("diff", ("differentiate", "derivative", "d/d")),
    ("solve", ("solve", "roots", "zeros")),
    ("limit", ("limit",)),
    ("simplify", ("simplify", "expand", "factor", "rewrite", "cancel")),
)


@dataclass(frozen=True)
class PromptForm:
    """A prompt reduced to a template (prose normalised, math replaced by canonical forms).

    ``back`` maps canonical symbol names to the prompt's names, ``forward`` the reverse;
    ``exprs`` are the prompt's own expressions (user's names), for verification.
    """

    key: str
    template: str
    math: str
    op: str | None
    back: dict[str, str] = field(default_factory=dict)
    forward: dict[str, str] = field(default_factory=dict)
    exprs: tuple[sympy.Basic, ...] = ()
    variable: str | None = None


def detect_op(text: str) -> str | None:
    """The mathematical operation a prompt asks for, from its verbs; ``None`` if none."""
    lowered = text.lower()
    for op, words in _OPS:
        if any(w in lowered for w in words):
            return op
    return None


def _normalise_text(prompt: str) -> str:
    text = unicodedata.normalize("NFKC", prompt)
    return " ".join(text.split())


def _is_mathy(token: str) -> bool:
    core = token.rstrip(_TRAILING)
    return bool(core) and any(c in _OP_CHARS or c.isdigit() for c in core)


def _starts_op(token: str) -> bool:
    return bool(token) and token[0] in _OP_CHARS


def _ends_op(token: str) -> bool:
    core = token.rstrip(_TRAILING)
    return bool(core) and core[-1] in "+-*/^=("


def _candidate_runs(tokens: list[str]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(tokens):
        if not _is_mathy(tokens[i]):
            i += 1
            continue
        start, end = i, i + 1
        if start > 0 and _starts_op(tokens[start]) and tokens[start - 1].isidentifier():
            start -= 1
        while end < len(tokens):
            prev, nxt = tokens[end - 1], tokens[end]
            if prev.rstrip(_TRAILING) != prev:
                break  # a trailing comma or full stop ends the expression
            joins = (
                _is_mathy(nxt)
                or (_ends_op(prev) and nxt.rstrip(_TRAILING).isidentifier())
                or (nxt.isidentifier() and end + 1 < len(tokens) and _starts_op(tokens[end + 1]))
            )
            if not joins:
                break
            end += 1
        runs.append((start, end))
        i = end
    return runs


def _looks_like_math(expr: sympy.Basic) -> bool:
    from sympy.core.function import AppliedUndef

    names = [s.name for s in expr.free_symbols if isinstance(s, sympy.Symbol)]
    funcs = [f.func.__name__ for f in expr.atoms(AppliedUndef)]
    return all(_SYMBOL_NAME.match(n) for n in names) and all(len(f) == 1 for f in funcs)


def canonical_prompt(
    schema_key: str,
    prompt: str,
    *,
    verifier_version: str = "",
    limits: Limits = DEFAULT_LIMITS,
) -> PromptForm:
    """The canonical key of a request.

    Maximal runs of tokens that parse (with the guarded parser) as expressions whose symbols
    look mathematical are replaced by placeholders; all of them are canonicalised *jointly*
    (one renaming for the whole prompt), and single-letter words naming one of their symbols
    (``with respect to x``) are renamed too. The prose is NFKC-normalised, lower-cased and
    whitespace-collapsed. A prompt without mathematics therefore keys on its normalised text.

    Raises
    ------
    ExpressionTooLargeError
        The prompt is over the size limit.
    """
    if len(prompt) > _MAX_PROMPT_CHARS:
        msg = f"prompt has {len(prompt)} characters, over the cache limit {_MAX_PROMPT_CHARS}"
        raise ExpressionTooLargeError(msg)
    pieces, exprs = _split_math(_normalise_text(prompt), limits)
    names: set[str] = set()
    back: dict[str, str] = {}
    forward: dict[str, str] = {}
    math_text = ""
    if exprs:
        form = canonicalize(
            sympy.Tuple(*exprs), op="request", verifier_version=verifier_version, limits=limits
        )
        math_text = form.text
        for canon, user in form.back.items():
            if isinstance(canon, sympy.Symbol) and isinstance(user, sympy.Symbol):
                back[canon.name] = user.name
                forward[user.name] = canon.name
                names.add(user.name)
        for canon_name, user_f in form.functions_back.items():
            back[canon_name] = user_f.__name__
            forward[user_f.__name__] = canon_name
    template, variable = _rename_words(" ".join(p for p in pieces if p), forward, names)
    op = detect_op(template)
    full = f"{schema_key}|{template}|{math_text}|{verifier_version}"
    key = hashlib.sha256(full.encode()).hexdigest()
    return PromptForm(
        key=key,
        template=template,
        math=math_text,
        op=op,
        back=back,
        forward=forward,
        exprs=tuple(exprs),
        variable=variable,
    )


def _split_math(text: str, limits: Limits) -> tuple[list[str], list[sympy.Basic]]:
    """The prose pieces (math replaced by ``⟨eN⟩`` placeholders) and the expressions, evaluated."""
    tokens = text.split(" ") if text else []
    pieces: list[str] = []
    exprs: list[sympy.Basic] = []
    last = 0
    for start, end in _candidate_runs(tokens):
        raw = " ".join(tokens[start:end])
        trail = raw[len(raw.rstrip(_TRAILING)) :]
        try:
            expr = safe_parse(raw.rstrip(_TRAILING), limits=limits)
        except CacheError:
            continue
        if not _looks_like_math(expr):
            continue
        pieces.append(" ".join(tokens[last:start]).lower())
        pieces.append(f"⟨e{len(exprs)}⟩{trail}")
        exprs.append(expr)
        last = end
    pieces.append(" ".join(tokens[last:]).lower())
    return pieces, [evaluated(e) for e in exprs]


def _rename_words(text: str, forward: dict[str, str], names: set[str]) -> tuple[str, str | None]:
    """Words naming a symbol of the math (``with respect to x``) renamed; the first such name."""
    renamed = []
    variable = None
    for w in text.split(" "):
        core = w.rstrip(_TRAILING)
        if core in forward and core in names:
            renamed.append(forward[core] + w[len(core) :])
            variable = variable or core
        else:
            renamed.append(w)
    return " ".join(renamed), variable


def _rename_text(text: str, mapping: dict[str, str]) -> str:
    if not mapping:
        return text
    names = sorted(mapping, key=len, reverse=True)
    pattern = re.compile(
        r"(?<![A-Za-z0-9_$])(" + "|".join(re.escape(n) for n in names) + r")(?![A-Za-z0-9_])"
    )
    return pattern.sub(lambda m: mapping[m.group(1)], text)


def map_value_json(value_json: str, mapping: dict[str, str]) -> str:
    """Rename symbols inside every string of a JSON value (whole identifiers only).

    Raises
    ------
    CacheError
        ``value_json`` is not JSON.
    """
    try:
        value = json.loads(value_json)
    except (TypeError, ValueError) as e:
        msg = f"the value to cache is not JSON: {e}"
        raise CacheError(msg) from e

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return _rename_text(v, mapping)
        if isinstance(v, list):
            return [walk(a) for a in v]
        if isinstance(v, dict):
            return {k: walk(a) for k, a in v.items()}
        return v

    return json.dumps(walk(value), sort_keys=True, ensure_ascii=False)


def math_leaves(value_json: str) -> list[sympy.Basic]:
    """Every string (or number) in a JSON value that parses as an expression."""
    out: list[sympy.Basic] = []

    def walk(v: Any) -> None:
        if isinstance(v, bool):
            return
        if isinstance(v, (int, float)):
            out.append(sympy.nsimplify(v, rational=True))
        elif isinstance(v, str):
            try:
                out.append(safe_parse(v))
            except CacheError:
                return
        elif isinstance(v, list):
            for a in v:
                walk(a)
        elif isinstance(v, dict):
            for a in v.values():
                walk(a)

    walk(json.loads(value_json))
    return out

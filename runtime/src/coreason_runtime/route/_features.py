"""What the routing policy sees of a request: features of its schema and its prompt."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from coreason_runtime._exceptions import ConfigurationError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from coreason_runtime.tensor._schema import SchemaSpec

    FloatArray = NDArray[np.float64]

__all__ = ["DEFAULT_FAMILIES", "Featurizer", "ModelEmbedder", "RequestContext", "schema_shape"]

#: Task families and the words that announce them (in the prompt or the schema's name).
DEFAULT_FAMILIES: Mapping[str, tuple[str, ...]] = {
    "calculus": (
        "derivative",
        "differentiate",
        "integral",
        "integrate",
        "antiderivative",
        "limit",
    ),
    "algebra": ("solve", "root", "roots", "factor", "simplify", "polynomial", "equation"),
    "linear_algebra": ("matrix", "eigenvalue", "eigenvalues", "determinant", "vector", "rank"),
    "physics": ("velocity", "energy", "force", "mass", "momentum", "units", "joule", "newton"),
    "code": ("algorithm", "complexity", "python", "sort", "graph", "runtime", "recursion"),
    "extraction": ("extract", "classify", "label", "sentiment", "entities", "summarise"),
}
_WORD = re.compile(r"[a-z_]+")
_HASHED = 4  # dimensions of the hashed bag of words


@dataclass(frozen=True)
class RequestContext:
    """One request as the policy sees it.

    ``x`` is the feature vector (every entry in [-1, 1]); ``family`` the task family the
    keywords name (``"other"`` when none does); ``k_req`` how demanding the schema is, in
    [0, 1], compared with a tier's declared ``k_model``; ``depth`` and ``fields`` the schema's
    nesting depth and property count.
    """

    x: FloatArray
    family: str
    k_req: float
    depth: int
    fields: int
    prompt_chars: int


def schema_shape(schema: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """``(depth, fields, numbers, enums)`` of a JSON schema, ``$defs`` followed once each."""
    defs = {**schema.get("$defs", {}), **schema.get("definitions", {})}
    counts = [0, 0, 0]  # fields, numeric leaves, enums/consts

    def walk(node: Any, depth: int, seen: frozenset[str]) -> int:
        if not isinstance(node, Mapping):
            return depth
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            if name in seen or name not in defs:
                return depth
            return walk(defs[name], depth, seen | {name})
        if node.get("type") in ("number", "integer"):
            counts[1] += 1
        if "enum" in node or "const" in node:
            counts[2] += 1
        deepest = depth
        props = node.get("properties")
        if isinstance(props, Mapping):
            counts[0] += len(props)
            for child in props.values():
                deepest = max(deepest, walk(child, depth + 1, seen))
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), Mapping):
                deepest = max(deepest, walk(node[key], depth + 1, seen))
        for key in ("anyOf", "oneOf", "allOf"):
            for child in node.get(key, ()) or ():
                deepest = max(deepest, walk(child, depth, seen))
        return deepest

    depth = walk(schema, 0, frozenset())
    return depth, counts[0], counts[1], counts[2]


def _scaled(value: float, top: float) -> float:
    """``log1p(value)`` mapped onto [-1, 1] with ``top`` at 1."""
    return float(min(1.0, 2.0 * math.log1p(max(value, 0.0)) / math.log1p(top) - 1.0))


def _hashed(words: Sequence[str]) -> list[float]:
    out = [0.0] * _HASHED
    for w in words:
        h = hashlib.blake2b(w.encode(), digest_size=2).digest()
        out[h[0] % _HASHED] += 1.0 if h[1] & 1 else -1.0
    norm = math.sqrt(max(len(words), 1))
    return [max(-1.0, min(1.0, v / norm)) * 0.5 for v in out]


class Featurizer:
    """Turns a request into a :class:`RequestContext`.

    Features: prompt length, schema size, depth, share of numeric fields, enums, a one-hot
    of the task family, a hashed bag of the prompt's words, and (when ``embedder`` is given)
    an embedding of the prompt.

    Parameters
    ----------
    families:
        ``{family: keywords}``; the family with the most keyword hits wins (first on a tie).
    embedder:
        ``embedder(text) -> vector`` of length ``embed_dims`` (values scaled into [-1, 1]);
        e.g. :class:`~coreason_runtime.route.ModelEmbedder` over a small local model.

    Raises
    ------
    ConfigurationError
        No families, or an ``embedder`` without ``embed_dims``.
    """

    def __init__(
        self,
        families: Mapping[str, Sequence[str]] = DEFAULT_FAMILIES,
        *,
        embedder: Callable[[str], Any] | None = None,
        embed_dims: int = 0,
    ) -> None:
        if not families:
            msg = "a Featurizer needs at least one task family"
            raise ConfigurationError(msg)
        if embedder is not None and embed_dims < 1:
            msg = "an embedder needs embed_dims >= 1"
            raise ConfigurationError(msg)
        self.families = {name: frozenset(w.lower() for w in kw) for name, kw in families.items()}
        self.names = [*self.families, "other"]
        self.embedder = embedder
        self.embed_dims = embed_dims if embedder is not None else 0
        self.dims = 5 + len(self.names) + _HASHED + self.embed_dims

    def family(self, words: Sequence[str]) -> str:
        """The family whose keywords appear most often in ``words`` (``"other"`` if none)."""
        best, hits = "other", 0
        for name, keywords in self.families.items():
            n = sum(1 for w in words if w in keywords)
            if n > hits:
                best, hits = name, n
        return best

    def context(self, spec: SchemaSpec, prompt: str, family: str | None = None) -> RequestContext:
        """The features of ``prompt`` under ``spec`` (``family`` forces the task family)."""
        words = _WORD.findall(f"{spec.name} {prompt}".lower().replace("_", " "))
        fam = family if family in self.names else self.family(words)
        depth, fields, numbers, enums = schema_shape(spec.json_schema)
        row = [
            _scaled(len(prompt), 4000),
            _scaled(fields, 64),
            min(depth, 6) / 3.0 - 1.0,
            2.0 * numbers / max(fields, 1) - 1.0,
            1.0 if enums else -1.0,
        ]
        row += [1.0 if n == fam else 0.0 for n in self.names]
        row += _hashed(words)
        if self.embedder is not None:
            emb = np.asarray(self.embedder(prompt), dtype=np.float64).reshape(-1)
            if emb.shape != (self.embed_dims,):
                msg = f"the embedder returned shape {emb.shape}, expected ({self.embed_dims},)"
                raise ConfigurationError(msg)
            row += list(np.clip(emb, -1.0, 1.0))
        k_req = min(1.0, 0.5 * max(depth - 1, 0) / 5.0 + 0.5 * math.log1p(fields) / math.log1p(64))
        return RequestContext(
            x=np.asarray(row, dtype=np.float64),
            family=fam,
            k_req=k_req,
            depth=depth,
            fields=fields,
            prompt_chars=len(prompt),
        )


class ModelEmbedder:
    """A small embedding of a prompt from a language model's token-embedding table.

    The mean of the prompt's token embeddings (no forward pass: a lookup and a mean), projected
    to ``dims`` by a fixed random matrix and squashed into [-1, 1] by ``tanh`` — cheap enough to
    run on every request. Pass it to :class:`Featurizer` as ``embedder`` with ``embed_dims``.

    Parameters
    ----------
    encode:
        ``encode(text) -> token ids``.
    table:
        The ``(vocabulary, hidden)`` embedding matrix.
    """

    def __init__(
        self, encode: Callable[[str], Sequence[int]], table: Any, *, dims: int = 8, seed: int = 0
    ) -> None:
        self.encode = encode
        self.table = np.asarray(table, dtype=np.float64)
        rng = np.random.default_rng(seed)
        hidden = self.table.shape[1]
        self.projection = rng.normal(0.0, 1.0 / math.sqrt(hidden), size=(hidden, dims))
        scale = float(np.linalg.norm(self.table, axis=1).mean()) or 1.0
        self.scale = 1.0 / scale
        self.dims = dims

    @classmethod
    def from_model(cls, loaded: Any, *, dims: int = 8, seed: int = 0) -> ModelEmbedder:
        """From a loaded model (``coreason_runtime.models.load_model``): its tokenizer and its
        input embeddings, copied once to NumPy."""
        weights = loaded.model.get_input_embeddings().weight.detach().float().cpu().numpy()

        def encode(text: str) -> list[int]:
            return [int(t) for t in loaded.tokenizer.encode(text, add_special_tokens=False)]

        return cls(encode, weights, dims=dims, seed=seed)

    def __call__(self, text: str) -> FloatArray:
        ids = [i for i in self.encode(text) if 0 <= i < self.table.shape[0]]
        if not ids:
            return np.zeros(self.dims)
        mean = self.table[ids].mean(axis=0) * self.scale
        out: FloatArray = np.tanh(3.0 * (mean @ self.projection))
        return out

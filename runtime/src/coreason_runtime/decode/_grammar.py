"""Grammar masks: the one llguidance tokenizer cache and the one logit-masking function.

Every constrained decode of the runtime (a router request on the local tier, a served
``response_format``, a decode session, a span repair) masks its logits here, through a
:class:`GrammarMask` built from the :class:`TokenizerInfo` of the model's tokenizer.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coreason_runtime._exceptions import GrammarDeadEndError, RequestError, SchemaCompileError

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["GrammarMask", "TokenizerInfo", "new_matcher", "tokenizer_info"]


@dataclass(frozen=True)
class TokenizerInfo:
    """The llguidance view of a tokenizer, and a stable identity to key compile caches with.

    ``vocab_size`` is the width of the mask: the larger of the tokenizer's vocabulary and the
    model's logits (a model may pad its vocabulary; a tiny test model may cut it short, and
    the logits it lacks are then never allowed).
    """

    ll: Any
    ident: str
    vocab_size: int
    eos_token_id: int


_TOKINFO: dict[tuple[int, int], tuple[Any, TokenizerInfo]] = {}
_TOKINFO_LOCK = threading.Lock()


def tokenizer_info(obj: Any, *, n_vocab: int | None = None) -> TokenizerInfo | None:
    """The :class:`TokenizerInfo` of a tokenizer-like object, built once per object and width.

    Accepts ``None``, a :class:`TokenizerInfo`, a ``LoadedModel`` (its tokenizer, as wide as
    the larger of its vocabulary and the model's) or a fast Hugging Face tokenizer
    (``n_vocab`` wide, by default its own length). Building it walks the whole vocabulary,
    so the compiler and the decode engine of one model share one.

    Raises
    ------
    SchemaCompileError
        The tokenizer is not a fast Hugging Face tokenizer.
    """
    if obj is None or isinstance(obj, TokenizerInfo):
        return obj
    if hasattr(obj, "tokenizer") and hasattr(obj, "model"):  # a LoadedModel
        tok = obj.tokenizer
        width = max(int(obj.model.config.vocab_size), len(tok))
    else:
        tok = obj
        width = len(tok) if n_vocab is None else n_vocab
    key = (id(tok), width)
    with _TOKINFO_LOCK:
        hit = _TOKINFO.get(key)
        if hit is not None and hit[0] is tok:
            return hit[1]
    import llguidance.hf

    # Identity by content, so two loads of one tokenizer share compiled grammars.
    backend = tok.backend_tokenizer.to_str() if hasattr(tok, "backend_tokenizer") else repr(tok)
    digest = hashlib.sha256(f"{backend}|{tok.eos_token_id}".encode()).hexdigest()[:16]
    try:
        ll = llguidance.hf.from_tokenizer(tok, n_vocab=width)
    except ValueError as e:
        msg = f"the local tier needs a fast Hugging Face tokenizer: {e}"
        raise SchemaCompileError(msg) from e
    info = TokenizerInfo(
        ll=ll, ident=f"tok-{digest}-{width}", vocab_size=width, eos_token_id=int(tok.eos_token_id)
    )
    with _TOKINFO_LOCK:
        _TOKINFO[key] = (tok, info)  # the tokenizer is kept alive, so its id stays unique
    return info


_POOL: list[ThreadPoolExecutor] = []


def _helper() -> ThreadPoolExecutor:
    """The one helper thread that computes grammar masks while forward passes run."""
    with _TOKINFO_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="coreason-mask"))
        return _POOL[0]


def new_matcher(info: TokenizerInfo, grammar: str) -> Any:
    """A fresh llguidance ``LLMatcher`` for ``grammar`` (Lark, regex or JSON grammar string).

    Raises
    ------
    RequestError
        The grammar does not compile against this tokenizer.
    """
    import llguidance

    matcher = llguidance.LLMatcher(info.ll, grammar, log_level=0)
    if matcher.is_error():
        msg = f"invalid grammar: {matcher.get_error()}"
        raise RequestError(msg)
    return matcher


class GrammarMask:
    """A matcher with a reusable bitmask: which tokens the grammar allows next.

    :meth:`apply` is the runtime's one masking function. The bitmask is written in place by
    llguidance and unpacked with numpy (llguidance's torch kernel compiles for tens of
    seconds on a CPU at its first call). :meth:`prefetch` computes the next mask on a helper
    thread (llguidance and numpy release the GIL) while the caller runs the forward pass;
    every use of the matcher first waits for that computation.
    """

    def __init__(self, matcher: Any, info: TokenizerInfo) -> None:
        import numpy as np

        self._matcher = matcher
        self.info = info
        self._bits = np.zeros((info.vocab_size + 31) // 32, dtype=np.int32)
        self._pending: Future[None] | None = None
        self._forbid: Any = None  # torch bool tensor of the current state, once computed

    @property
    def matcher(self) -> Any:
        """The llguidance matcher, for a caller that may change its state (after any mask
        computation in flight has finished; the computed mask is dropped)."""
        m = self._m()
        self._forbid = None
        return m

    def _m(self) -> Any:
        """The matcher, once no helper thread is using it."""
        self._settle()
        return self._matcher

    def _settle(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _compute(self) -> None:
        """Fill the bitmask and the forbidden-token tensor for the matcher's current state."""
        import numpy as np
        import torch

        m = self._matcher
        m.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        if m.is_error():
            self._forbid = None
            return
        allowed = np.unpackbits(self._bits.view(np.uint8), bitorder="little")
        self._forbid = torch.from_numpy(allowed[: self.info.vocab_size] == 0)

    def prefetch(self) -> None:
        """Start computing the mask of the current state on the helper thread."""
        if self._pending is None and self._forbid is None:
            self._pending = _helper().submit(self._compute)

    def _forbidden(self) -> Any:
        self._settle()
        if self._forbid is None:
            self._compute()
        m = self._matcher
        if m.is_error() or self._forbid is None:
            msg = f"grammar error: {m.get_error()}"
            raise GrammarDeadEndError(msg)
        if bool(self._forbid.all()):
            msg = "the grammar allows no token here"
            raise GrammarDeadEndError(msg)
        return self._forbid

    def allowed(self) -> np.ndarray[Any, Any]:
        """A boolean array over the vocabulary: the tokens the grammar allows next.

        Raises
        ------
        GrammarDeadEndError
            The matcher is in error, or allows no token at all.
        """
        out: np.ndarray[Any, Any] = (~self._forbidden()).numpy()
        return out

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (1-D) with every token the grammar forbids set to ``-inf`` (a copy)."""
        import torch

        forbid = self._forbidden()[: logits.shape[-1]]
        if forbid.shape[0] < logits.shape[-1]:  # logits wider than the tokenizer: never allowed
            pad = torch.ones(logits.shape[-1] - forbid.shape[0], dtype=torch.bool)
            forbid = torch.cat([forbid, pad])
        return logits.masked_fill(forbid.to(logits.device), float("-inf"))

    def consume(self, token: int) -> None:
        """Advance the grammar by ``token``.

        Raises
        ------
        GrammarDeadEndError
            The grammar rejects the token.
        """
        m = self.matcher
        if not m.consume_token(token):
            msg = f"grammar rejected token {token}: {m.get_error()}"
            raise GrammarDeadEndError(msg)

    def rollback(self, n: int) -> None:
        """Undo the last ``n`` consumed tokens."""
        if n > 0:
            self.matcher.rollback(n)

    @property
    def stopped(self) -> bool:
        """The grammar is complete and allows nothing more."""
        return bool(self._m().is_stopped())

    @property
    def accepting(self) -> bool:
        """What was consumed so far is a complete value."""
        return bool(self._m().is_accepting())

    def copy(self) -> GrammarMask:
        """An independent mask at the same grammar state (checkpoints)."""
        return GrammarMask(self._m().deep_copy(), self.info)

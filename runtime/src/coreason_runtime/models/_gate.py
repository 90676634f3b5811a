"""Checkpoints inside a forward pass: at every decoder-layer boundary and inside the LM head.

A token step of a causal LM on the CPU is tens of milliseconds, so a pause that waits for the
step to end is slow. :class:`LayerGate` registers one forward pre-hook per decoder layer of a
model (once per model, however many engines and tiers share it) and calls the check that the
current thread installed with :meth:`LayerGate.checking`. A check may block (a pause that
waits in place, the KV untouched by the layers not yet run) or raise (an interrupt or an
abort: the pass is abandoned and the caller crops the cache back).

The LM head is the largest single matrix product of a small model (SmolLM2-135M: 49,152 x
576, ~11 ms on one CPU thread, four decoder layers' worth), so :meth:`LayerGate.last_logits`
computes it in row blocks with the check between blocks. Every vocabulary row is still one dot
product with the same hidden state; only the blocking of the product changes.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from coreason_runtime._exceptions import ConfigurationError

if TYPE_CHECKING:
    import torch

__all__ = ["GateHook", "LayerGate", "decoder_layers"]

Check = Callable[[], None]

_GATES: weakref.WeakKeyDictionary[Any, LayerGate] = weakref.WeakKeyDictionary()
_GATES_LOCK = threading.Lock()


def decoder_layers(model: Any) -> Sequence[Any]:
    """The model's list of decoder blocks (the boundaries where a check runs)."""
    import torch

    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return list(module)
    msg = f"cannot find the {n} decoder layers of {type(model).__name__}"
    raise ConfigurationError(msg)


class GateHook:
    """The forward pre-hook a :class:`LayerGate` puts on each decoder layer.

    It holds its gate weakly and is shared, not copied, by ``copy.deepcopy`` (a copied model
    keeps working; its own gate adds its own hooks).
    """

    __slots__ = ("_gate",)

    def __init__(self, gate: LayerGate) -> None:
        self._gate = weakref.ref(gate)

    def __call__(self, module: Any, args: Any) -> None:
        gate = self._gate()
        check = None if gate is None else gate.check
        if check is not None:
            check()

    def __deepcopy__(self, memo: dict[int, Any]) -> GateHook:
        return self


class LayerGate:
    """The per-model hooks that run the calling thread's check at layer boundaries.

    Get one with :meth:`for_model`; it lives as long as the model. ``head_rows`` is the row
    block of the split LM head (``0``: one product, no checks inside the head).
    """

    head_rows = 4096

    def __init__(self, model: Any) -> None:
        self._local = threading.local()
        self._model_ref = weakref.ref(model)
        hook = GateHook(self)
        self.handles = [layer.register_forward_pre_hook(hook) for layer in decoder_layers(model)]
        self._split_head = self._can_split(model)
        from coreason_runtime.models._fast import FastStep

        self._fast = FastStep.for_model(model)

    @classmethod
    def for_model(cls, model: Any) -> LayerGate:
        with _GATES_LOCK:
            gate = _GATES.get(model)
            if gate is None:
                gate = _GATES[model] = cls(model)
            return gate

    @staticmethod
    def _can_split(model: Any) -> bool:
        """A plain linear head with nothing after it (Llama, Qwen2, Mistral, ...)."""
        import torch

        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        cfg = model.config
        return (
            type(head) is torch.nn.Linear
            and hasattr(model, "get_decoder")
            and not getattr(cfg, "final_logit_softcapping", None)
            and getattr(cfg, "logit_scale", None) is None
        )

    # --- the check ---------------------------------------------------------------------------

    @property
    def check(self) -> Check | None:
        return getattr(self._local, "check", None)

    @contextmanager
    def checking(self, check: Check | None) -> Iterator[None]:
        """Run ``check`` at every boundary of forward passes made on this thread meanwhile."""
        previous = self.check
        self._local.check = check
        try:
            yield
        finally:
            self._local.check = previous

    # --- the forward pass --------------------------------------------------------------------

    def last_logits(self, input_ids: torch.Tensor, cache: Any) -> torch.Tensor:
        """Append ``input_ids`` (shape ``[1, n]``) to ``cache``; next-token logits (1-D, fp32).

        The caller holds whatever lock serialises the model and runs under ``no_grad`` or
        ``inference_mode``. One new token of a Llama-family model takes the lean step
        (:class:`~coreason_runtime.models._fast.FastStep`, checks between its layers);
        anything else runs the model's own forward. With a check installed and a splittable
        head, the head runs in row blocks with the check between them.
        """
        model = self._model_ref()
        assert model is not None
        check = self.check
        fast = self._fast
        if fast is not None and input_ids.shape[1] == 1 and fast.usable(cache):
            return self._head(model, fast.hidden(input_ids, cache, check), check)
        if check is None or not self._split_head or self.head_rows <= 0:
            out = model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
            last: torch.Tensor = out.logits[0, -1].float()
            return last
        hidden = model.get_decoder()(
            input_ids=input_ids, cache=cache, use_cache=True
        ).last_hidden_state[0, -1]
        return self._head(model, hidden, check)

    def _head(self, model: Any, hidden: torch.Tensor, check: Check | None) -> torch.Tensor:
        """The LM head on one hidden state; in row blocks with ``check`` between them."""
        import torch

        head = model.get_output_embeddings()
        if check is None or not self._split_head or self.head_rows <= 0:
            out: torch.Tensor = head(hidden)
            return out.float()
        parts = []
        for i, rows in enumerate(head.weight.split(self.head_rows)):
            if i:
                check()
            parts.append(torch.mv(rows, hidden))
        logits = torch.cat(parts)
        if head.bias is not None:
            logits = logits + head.bias
        return logits.float()

    def can_batch(self, caches: Sequence[Any]) -> bool:
        """Whether :meth:`batch_logits` can step these caches together (a Llama-family model
        whose lean step applies to every one of them)."""
        fast = self._fast
        return fast is not None and all(fast.usable(c) for c in caches)

    def batch_logits(
        self,
        tokens: Sequence[int],
        caches: Sequence[Any],
        checks: Sequence[Check | None],
        dropped: Callable[[int, Exception], None],
    ) -> list[torch.Tensor | None]:
        """Append ``tokens[i]`` to ``caches[i]`` for every ``i`` in one batched forward pass;
        each row's next-token logits (1-D, fp32), or None for a row whose check raised (it
        left the batch at that layer boundary; ``dropped(i, error)`` was called then).

        Needs :meth:`can_batch`. The caller holds the model lock, under ``no_grad``. The
        head runs on the batch's hidden states in row blocks, the checks between blocks.
        """
        import torch

        model = self._model_ref()
        fast = self._fast
        assert model is not None and fast is not None
        device = fast.embed.weight.device
        ids = torch.tensor(list(tokens), device=device)
        hidden, rows = fast.hidden_rows(ids, caches, checks, dropped)
        out: list[torch.Tensor | None] = [None] * len(caches)
        if not rows:
            return out
        head = model.get_output_embeddings()
        if not self._split_head or self.head_rows <= 0:
            from coreason_runtime.models._fast import rowwise

            logits = rowwise(head, hidden).float()
        else:
            from coreason_runtime.models._fast import run_checks

            parts: list[torch.Tensor] = []
            for i, block in enumerate(head.weight.split(self.head_rows)):
                keep = run_checks(rows, checks, dropped) if i else None
                if keep is not None:
                    rows = [rows[j] for j in keep]
                    if not rows:
                        return out
                    hidden = hidden[keep]
                    parts = [p[keep] for p in parts]
                parts.append(hidden @ block.T)
            logits = torch.cat(parts, dim=1)
            if head.bias is not None:
                logits = logits + head.bias
            logits = logits.float()
        for j, row in enumerate(rows):
            out[row] = logits[j]
        return out

    def close(self) -> None:
        """Remove the hooks (tests; the gate otherwise lives as long as its model)."""
        for h in self.handles:
            h.remove()
        self.handles = []
        model = self._model_ref()
        with _GATES_LOCK:
            if model is not None and _GATES.get(model) is self:
                del _GATES[model]

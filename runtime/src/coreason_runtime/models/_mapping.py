"""From probes to a validated precision map: the cheapest assignment within a quality budget.

:func:`solve` picks, for every module, the format minimising ``cost + lam * KL`` and searches
``lam`` so that the summed probe KLs stay within a KL allowance (the Lagrangian relaxation of
the multiple-choice knapsack). Summed single-module KLs only estimate the KL of all changes at
once, so :func:`build_precision_map` validates the whole map (:func:`validate`: perplexity and
KL on held-out text, greedy continuations of fixed prompts, all against fp32) and halves the
allowance until a map keeps the budget; an all-fp32 map always does.

A map is built on the device the model is on, from the formats offered there
(:func:`~._formats.candidates`: bf16/int8/int4 on the CPU, bf16/fp16/fp8 on CUDA), and
records that kind of device; it is applied only on the same kind.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from coreason_runtime.models._calibration import GREEDY_PROMPTS, VALIDATION
from coreason_runtime.models._precision import PrecisionMap, QualityBudget, Validation, apply_map
from coreason_runtime.models._probe import (
    ProbeTable,
    Progress,
    chat_ids,
    device_of,
    group_of,
    probe_model,
)

if TYPE_CHECKING:
    import torch

__all__ = ["build_precision_map", "greedy_tokens", "perplexity", "solve", "validate"]


def _options(table: ProbeTable) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per module: format -> (µs per token, KL, bytes); fp32 always costs no KL."""
    opts: dict[str, dict[str, tuple[float, float, int]]] = {}
    members: dict[tuple[str, str], int] = {}
    for r in table.rows:
        members[r.group, r.fmt] = members.get((r.group, r.fmt), 0) + 1
    for r in table.rows:
        group = table.costs.get(r.group, {})
        sizes = table.bytes.get(r.group, {})
        n = members[r.group, r.fmt]
        if r.fmt not in group or "fp32" not in group:
            continue
        per = opts.setdefault(r.name, {"fp32": (group["fp32"] / n, 0.0, sizes.get("fp32", 0) // n)})
        per[r.fmt] = (group[r.fmt] / n, r.kl, sizes.get(r.fmt, 0) // n)
    return opts


def _pick(opts: dict[str, tuple[float, float, int]], lam: float) -> str:
    # ties in time (embeddings, norms: a lookup costs the same) go to the smaller format
    return min(opts, key=lambda f: (opts[f][0] + lam * opts[f][1], opts[f][2]))


def solve(table: ProbeTable, kl_allowance: float) -> tuple[dict[str, str], float, float]:
    """The cheapest per-module formats whose probe KLs sum to at most ``kl_allowance``.

    Returns the non-fp32 assignments, their estimated µs per token, and the summed KL.
    """
    opts = _options(table)

    def assign(lam: float) -> tuple[dict[str, str], float, float]:
        chosen = {name: _pick(o, lam) for name, o in opts.items()}
        cost = sum(opts[n][f][0] for n, f in chosen.items())
        kl = sum(opts[n][f][1] for n, f in chosen.items())
        return {n: f for n, f in chosen.items() if f != "fp32"}, cost, kl

    lo, hi = 0.0, 1.0
    while assign(hi)[2] > kl_allowance and hi < 1e12:
        hi *= 10
    for _ in range(60):  # bisect the price of KL in µs
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 1e6
        if assign(mid)[2] > kl_allowance:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-9 * hi:
            break
    return assign(hi)


def perplexity(
    model: Any, ids: torch.Tensor, ref: torch.Tensor | None = None
) -> tuple[float, float, Any]:
    """(perplexity of ``ids`` under ``model``, mean KL from ``ref`` log-probs, log-probs)."""
    import torch

    ids = ids.to(device_of(model))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0, :-1].float(), -1)
    nll = float(-logp.gather(1, ids[0, 1:, None]).mean())
    kl = 0.0 if ref is None else float((ref.exp() * (ref - logp)).sum(-1).mean())
    return math.exp(nll), max(kl, 0.0), logp


def greedy_tokens(model: Any, tokenizer: Any, prompt: str, n: int) -> list[int]:
    """``n`` greedy tokens after a chat ``prompt``, one cached forward pass per token."""
    import torch
    from transformers import DynamicCache

    msgs = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    device = device_of(model)
    x = torch.tensor([tokenizer(ids, add_special_tokens=False)["input_ids"]], device=device)
    cache = DynamicCache(config=model.config)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=1).logits
            tok = int(logits[0, -1].argmax())
            out.append(tok)
            x = torch.tensor([[tok]], device=device)
    return out


def validate(
    model: Any,
    reference: Any,
    tokenizer: Any,
    *,
    prompts: Sequence[str] = GREEDY_PROMPTS,
    greedy_tokens_n: int = 24,
    tokens: int = 320,
) -> Validation:
    """Judge ``model`` (a map applied) against ``reference`` (the same weights in fp32)."""
    import torch

    ids = torch.tensor([chat_ids(tokenizer, VALIDATION, tokens)])
    ppl_ref, _, ref_logp = perplexity(reference, ids)
    ppl, kl, _ = perplexity(model, ids, ref_logp)
    agree, exact = 0.0, 0
    for p in prompts:
        a = greedy_tokens(reference, tokenizer, p, greedy_tokens_n)
        b = greedy_tokens(model, tokenizer, p, greedy_tokens_n)
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
        agree += same / len(a)
        exact += same == len(a)
    return Validation(
        ppl_fp32=round(ppl_ref, 5),
        ppl=round(ppl, 5),
        kl_mean=round(kl, 6),
        greedy_match=round(agree / max(1, len(prompts)), 4),
        greedy_exact=exact,
        prompts=len(prompts),
        tokens=int(ids.shape[1]),
        torch=torch.__version__,
    )


_QUANTISED = ("int8", "int4", "fp8")


def _sensitive(table: ProbeTable, modules: dict[str, str], share: float) -> tuple[str, ...]:
    """The most sensitive quantised linear layers: the ``share`` with the highest probe KL."""
    scored = []
    for name, fmt in modules.items():
        kl = table.kl(name, fmt)
        if kl is not None and fmt in _QUANTISED and group_of(name) != name:
            scored.append((kl, name))
    scored.sort(reverse=True)
    return tuple(sorted(n for _, n in scored[: max(1, round(share * len(scored)))]))


def build_precision_map(
    model: Any,
    tokenizer: Any,
    *,
    name: str,
    revision: str,
    budget: QualityBudget | None = None,
    table: ProbeTable | None = None,
    formats: Sequence[str] | None = None,
    sensitive_share: float = 0.1,
    progress: Progress | None = None,
) -> tuple[PrecisionMap, ProbeTable]:
    """Probe ``model`` (fp32, left unchanged), solve, and validate until a map keeps ``budget``.

    ``formats`` defaults to the candidates of the model's device; the map records that kind
    of device (``cpu`` or ``cuda``). A given ``table`` must have been probed on that kind.
    The KL allowance starts at ``log(1 + budget.ppl_increase)`` (a perplexity ratio in nats)
    and is halved after each map that fails validation, at most five times; the all-fp32 map
    is the fallback. Returns the validated map and the probe table.
    """
    from coreason_runtime._exceptions import PrecisionError
    from coreason_runtime.models._formats import device_kind

    budget = budget or QualityBudget()
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    device = device_kind(device_of(model))
    if table is None:
        table = probe_model(
            model, tokenizer, name=name, revision=revision, formats=formats, progress=say
        )
    if table.device != device:
        msg = f"the probe table was measured on {table.device}; the model is on {device}"
        raise PrecisionError(msg)
    fp32_cost = sum(c.get("fp32", 0.0) for c in table.costs.values())
    allowance = math.log1p(budget.ppl_increase)
    tried: list[dict[str, Any]] = []
    for _ in range(6):
        modules, cost, kl_sum = solve(table, allowance)
        sensitive = _sensitive(table, modules, sensitive_share) if modules else ()
        candidate = copy.deepcopy(model)
        apply_map(candidate, PrecisionMap(name, revision, modules, device=device))
        v = validate(candidate, model, tokenizer)
        del candidate
        broken = budget.breaches(v)
        tried.append(
            {"allowance": allowance, "modules": len(modules), "kl_sum": kl_sum, "broken": broken}
        )
        say(f"map with KL allowance {allowance:.4g}: {len(modules)} modules, {broken or 'ok'}")
        if not broken or not modules:
            break
        allowance /= 2
    if broken:  # nothing kept the budget: every module stays in fp32 (the reference itself)
        modules, sensitive, cost = {}, (), fp32_cost
        v = Validation(v.ppl_fp32, v.ppl_fp32, 0.0, 1.0, v.prompts, v.prompts, v.tokens, v.torch)
    notes = {"tries": tried, "seconds": round(time.perf_counter() - t0, 1)}
    pmap = PrecisionMap(
        model=name,
        revision=revision,
        modules=modules,
        budget=budget,
        validation=v,
        sensitive=sensitive,
        cost_us=round(cost, 1),
        cost_us_fp32=round(fp32_cost, 1),
        notes=notes,
        device=device,
    )
    return pmap, table


def ensure_map(
    name: str | None = None,
    *,
    cache_dir: Any = None,
    budget: QualityBudget | None = None,
    rebuild: bool = False,
    progress: Progress | None = None,
    device: str | None = None,
) -> PrecisionMap:
    """The validated map saved beside a converted model, built (probes included) if missing.

    ``coreason models pull`` calls this for the models it converts, so the default model
    loads with a validated map. The map is for the kind of ``device`` (default: the one
    :func:`load_model` picks, CUDA when available); the probe table is saved beside it
    (``precision-probe.json``, or ``precision-probe-cuda.json`` for CUDA).
    """
    import json

    from coreason_runtime.models._formats import device_kind
    from coreason_runtime.models._loader import _pick_device, _revision, load_model, pull
    from coreason_runtime.models._precision import _write_json, probe_file, read_map, write_map

    folder = pull(name, cache_dir=cache_dir, precision=False)
    budget = budget or QualityBudget()
    dev = _pick_device(device)
    kind = device_kind(dev)
    current = None if rebuild else _current(read_map(folder, kind), _revision(folder), budget)
    if current is not None:  # validated for these weights: nothing to load
        return current
    loaded = load_model(name, cache_dir=cache_dir, precision="fp32", device=dev)
    table = None
    probe_path = folder / probe_file(kind)
    if not rebuild and probe_path.is_file():
        cached = ProbeTable.from_json(json.loads(probe_path.read_text()))
        fresh = cached.revision == loaded.revision and cached.device == kind
        table = cached if fresh else None
    with loaded.lock:
        pmap, table = build_precision_map(
            loaded.model,
            loaded.tokenizer,
            name=loaded.name,
            revision=loaded.revision,
            budget=budget,
            table=table,
            progress=progress,
        )
    _write_json(table.to_json(), probe_path)
    write_map(pmap, folder)
    return pmap


def _current(
    pmap: PrecisionMap | None, revision: str, budget: QualityBudget
) -> PrecisionMap | None:
    import torch

    if pmap is None or pmap.revision != revision or pmap.budget != budget or not pmap.valid:
        return None
    assert pmap.validation is not None
    return pmap if pmap.validation.torch == torch.__version__ else None


def install_map(path: Any, name: str | None = None, *, cache_dir: Any = None) -> PrecisionMap:
    """Validate the map at ``path`` on this machine, on the kind of device it was built for,
    and save it beside the model.

    Raises
    ------
    PrecisionMapError
        The map is unreadable or for other weights, or for CUDA on a machine without it.
    PrecisionBudgetError
        Validated here, it breaks its budget: it is not installed.
    """
    from pathlib import Path

    import torch

    from coreason_runtime._exceptions import PrecisionMapError
    from coreason_runtime.models._loader import load_model, pull
    from coreason_runtime.models._precision import read_map, write_map

    pmap = read_map(Path(path))
    if pmap is None:
        msg = f"no precision map at {path}"
        raise PrecisionMapError(msg)
    if pmap.device == "cuda" and not torch.cuda.is_available():
        msg = f"the map at {path} is for a CUDA device; this machine has none to validate it on"
        raise PrecisionMapError(msg)
    folder = pull(name, cache_dir=cache_dir, precision=False)
    loaded = load_model(name, cache_dir=cache_dir, precision="fp32", device=pmap.device)
    if pmap.revision != loaded.revision:
        msg = f"the map is for revision {pmap.revision}; {loaded.name} is {loaded.revision}"
        raise PrecisionMapError(msg)
    with loaded.lock:
        candidate = copy.deepcopy(loaded.model)
        apply_map(
            candidate, PrecisionMap(pmap.model, pmap.revision, pmap.modules, device=pmap.device)
        )
        v = validate(candidate, loaded.model, loaded.tokenizer)
    checked = dataclasses.replace(pmap, validation=v)
    checked.check()  # refused before it is written
    write_map(checked, folder)
    return checked

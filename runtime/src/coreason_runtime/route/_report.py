"""The tier matrix as a table: what each tier is, what it costs, and how it has done."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator

__all__ = ["format_tiers", "tier_rows"]


def tier_rows(rt: Coordinator) -> list[dict[str, Any]]:
    """One row per tier of ``rt``'s matrix (in cascade order): kind, model, weights, price,
    capability, health, and the success rate, mean C and money observed in its history."""
    matrix = rt.tiers
    routing = matrix.routing()
    stats = routing.stats()
    cage = rt.budgets
    rows = []
    for spec in matrix.specs:
        w_in = spec.weight_in if spec.weight_in is not None else cage.weight_in
        w_out = spec.weight_out if spec.weight_out is not None else cage.weight_out
        st = stats.get(spec.name)
        cap = spec.capability
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "model": spec.model or ("(runtime's)" if spec.kind == "local" else spec.function),
                "weight_in": w_in,
                "weight_out": w_out,
                "price_in": spec.price_in,
                "price_out": spec.price_out,
                "k_model": cap.k_model,
                "families": list(cap.families) if cap.families is not None else None,
                "health": routing.health(spec.name),
                "requests": st.requests if st else 0,
                "success_rate": st.success_rate if st else None,
                "mean_cost": st.mean_cost if st else None,
                "money": spec.money(st.tokens_in, st.tokens_out) if st else 0.0,
            }
        )
    return rows


def format_tiers(rows: list[dict[str, Any]], policy: str) -> str:
    """A plain-text table of :func:`tier_rows` (for ``coreason tiers``)."""
    head = (
        f"{'tier':<14} {'kind':<8} {'model':<28} {'C = w_in·T_in + w_out·T_out':<28} "
        f"{'K':>4} {'health':<9} {'n':>6} {'success':>8} {'mean C':>9} {'money':>9}"
    )
    lines = [f"routing policy: {policy}", head]
    for r in rows:
        rate = "-" if r["success_rate"] is None else f"{r['success_rate']:.0%}"
        mean = "-" if r["mean_cost"] is None else f"{r['mean_cost']:.0f}"
        money = f"{r['money']:.4g}" if r["price_in"] or r["price_out"] else "-"
        weights = f"{r['weight_in']:g}·T_in + {r['weight_out']:g}·T_out"
        model = str(r["model"] or "")[:28]
        lines.append(
            f"{r['name']:<14} {r['kind']:<8} {model:<28} {weights:<28} {r['k_model']:>4.2f} "
            f"{r['health']:<9} {r['requests']:>6} {rate:>8} {mean:>9} {money:>9}"
        )
    return "\n".join(lines)

"""Cost before spend: what a request would reserve, tier by tier, without running anything.

``rt.router.dry_run(...)`` (``%%coreason ask ... --dry-run``, ``coreason ask --dry-run``) walks
the cascade as :meth:`TensorRouter.generate` would and applies the budget cage's reservation
rule: before each attempt the cage leases ``w_in·T_in + w_out·min(max_tokens, lease_tokens)``
(the prompt and a first chunk of output; the lease grows as tokens come, up to
``w_in·T_in + w_out·max_tokens``), clipped to what is left of Ω as long as the prompt and one
output token fit, else it refuses. The plan names each tier, the form of the schema it would
get (a grammar, OpenAI's strict form, or why it would be skipped), its exact prompt tokens, the
first attempt's lease, the most one attempt can charge, and the worst case of the whole request
(every try of every tier consuming its full allowance, never past Ω). Compiling the
schema and counting tokens is all it does: no decoding, no reservation, no charge.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coreason_runtime._exceptions import CoreasonError
from coreason_runtime.tensor._admission import checked_request, policy_of
from coreason_runtime.tensor._schema import SchemaSpec
from coreason_runtime.tensor._types import SteerableTier

if TYPE_CHECKING:
    from collections.abc import Sequence

    from coreason_runtime.budget import Ledger
    from coreason_runtime.tensor._router import TensorRouter

__all__ = ["DryRun", "TierPlan", "plan_request"]


@dataclass(frozen=True)
class TierPlan:
    """One tier of the cascade as the request would meet it."""

    tier: str
    model: str
    form: str  # "grammar" | "openai strict" | "skipped: <why>"
    prompt_tokens: int
    reserve: float  # C one attempt may charge at most (w_in·T_in + w_out·max_tokens)
    attempts: int  # tries at most (k_max)
    lease: float = 0.0  # C leased when the attempt starts (the prompt and a first chunk)

    @property
    def skipped(self) -> bool:
        return self.form.startswith("skipped")


@dataclass
class DryRun:
    """The plan of one request: tiers, reservations, and what is left of Ω."""

    workflow_id: str
    max_tokens: int
    weight_in: float
    weight_out: float
    ledger: Ledger
    tiers: list[TierPlan] = field(default_factory=list)

    @property
    def left(self) -> float:
        """Ω − spent − reserved now (``inf`` without a ceiling)."""
        return self.ledger.remaining

    @property
    def first(self) -> TierPlan | None:
        """The tier the first attempt would go to."""
        return next((t for t in self.tiers if not t.skipped), None)

    @property
    def first_grant(self) -> float | None:
        """What the first attempt would be granted; ``None`` if the cage would refuse it."""
        first = self.first
        if first is None:
            return None
        minimum = self.weight_in * first.prompt_tokens + self.weight_out
        if self.left < minimum:
            return None
        return min(first.lease or first.reserve, self.left)

    @property
    def worst_case(self) -> float:
        """C the whole request could charge at most: every try of every tier at its full
        grant, never more than what is left of Ω."""
        total = sum(t.reserve * t.attempts for t in self.tiers if not t.skipped)
        return min(total, self.left)

    @property
    def fits(self) -> bool:
        return self.first_grant is not None

    def lines(self) -> list[str]:
        """The plan as text (the command line prints it)."""
        omega = "∞" if self.ledger.ceiling is None else f"{self.ledger.ceiling:g}"
        left = "∞" if math.isinf(self.left) else f"{self.left:g}"
        out = [
            f"dry run: workflow {self.workflow_id!r} · Ω {omega} · C {self.ledger.spent:g} spent"
            f" · {self.ledger.reserved:g} reserved · {left} left",
            f"cost C = {self.weight_in:g}·T_in + {self.weight_out:g}·T_out; "
            f"max_tokens {self.max_tokens} per attempt",
        ]
        for t in self.tiers:
            detail = (
                t.form
                if t.skipped
                else f"{t.form} · T_in {t.prompt_tokens} · lease C {t.lease:g} first, at most "
                f"C {t.reserve:g} per attempt "
                f"· ≤ {t.attempts} attempts"
            )
            out.append(f"  {t.tier} ({t.model}): {detail}")
        grant = self.first_grant
        if grant is None:
            first = self.first
            need = (
                "no tier can take it"
                if first is None
                else f"refused: needs C {self.weight_in * first.prompt_tokens + self.weight_out:g}"
                f" (the prompt and one output token), {left} left"
            )
            out.append(f"first attempt: {need}")
        else:
            out.append(f"first attempt leases C {grant:g}; worst case C {self.worst_case:g}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def _repr_html_(self) -> str:
        head, *rest = self.lines()
        items = "".join(f"<li>{html.escape(x.strip())}</li>" for x in rest)
        return f"<div class='coreason-dry-run'><b>{html.escape(head)}</b><ul>{items}</ul></div>"


def plan_request(
    router: TensorRouter,
    schema: Any,
    prompt: str,
    workflow_id: str,
    *,
    tiers: Sequence[str] | None = None,
    max_tokens: int | None = None,
    system: str | None = None,
    verify: Any = None,
) -> DryRun:
    """The :class:`DryRun` of a request (see the module's docstring); the arguments are
    :meth:`TensorRouter.generate`'s. With ``verify``, a steerable tier's attempt may also spend
    the policy's span-repair tokens.

    Raises
    ------
    SchemaError, RequestError, UnknownWorkflowError
        As :meth:`TensorRouter.generate` would, before any spend.
    """
    cascade = router.select(tiers)
    system = system or router.system_prompt
    policy = policy_of(verify)
    repair = 0 if policy is None else policy.repair_tokens
    spec = schema if isinstance(schema, SchemaSpec) else SchemaSpec.from_user(schema)
    max_tokens = checked_request(prompt, max_tokens, router.default_max_tokens)
    budgets = router.budgets
    plan = DryRun(
        workflow_id,
        max_tokens,
        budgets.weight_in,
        budgets.weight_out,
        budgets.get(workflow_id),
    )
    messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    chunk = budgets.lease_tokens
    first_chunk = max_tokens if chunk is None else min(max_tokens, chunk)
    for tier in cascade:
        steerable = isinstance(tier, SteerableTier)
        try:
            compiled = router.compile(spec, tier)
        except CoreasonError as e:
            plan.tiers.append(TierPlan(tier.name, tier.model_name, f"skipped: {e}", 0, 0.0, 0))
            continue
        form = compiled.grammar if steerable else compiled.openai
        missing = compiled.errors.get("grammar" if steerable else "openai")
        if form is None and missing is not None:
            reason = f"skipped: {missing}"
            plan.tiers.append(TierPlan(tier.name, tier.model_name, reason, 0, 0.0, 0))
            continue
        tokens = tier.count_prompt(messages, compiled)
        plan.tiers.append(
            TierPlan(
                tier.name,
                tier.model_name,
                "grammar" if steerable else "openai strict",
                tokens,
                budgets.cost(tokens, max_tokens + (repair if steerable else 0)),
                router.max_attempts_per_tier,
                budgets.cost(tokens, first_chunk),
            )
        )
    return plan

"""Routing: the router's one hook: plan a request's tiers, gate each escalation, learn after.

``TensorRouter._cascade`` asks :meth:`Routing.begin` for a :class:`RouteSession` and walks
:meth:`RouteSession.walk`: the plan's tiers in order, the what-if gate judging every
escalation (and the tiers the plan stopped before, which the gate may still allow). On an
answer :meth:`RouteSession.finish` puts the plan on the result and learns from every tier
tried; when none answered :meth:`RouteSession.fail` learns and says why the human is asked.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from coreason_runtime._events import EventBus, EventType
from coreason_runtime._exceptions import EpistemicYieldError, EscalationRefusedError
from coreason_runtime.route._features import Featurizer, RequestContext
from coreason_runtime.route._outcome import TierOutcome, outcome, tier_outcomes
from coreason_runtime.route._policy import RoutePlan, RoutingPolicy
from coreason_runtime.route._tiers import FunctionTier

if TYPE_CHECKING:
    import numpy as np

    from coreason_runtime.route._gate import EscalationGate
    from coreason_runtime.route._matrix import TierSpec
    from coreason_runtime.route._store import HistoryStore, TierStats
    from coreason_runtime.sim import Decision
    from coreason_runtime.tensor._attempts import RequestPlan
    from coreason_runtime.tensor._schema import SchemaSpec
    from coreason_runtime.tensor._types import Result, Tier
    from coreason_runtime.verify import RepairRecord

__all__ = ["RouteSession", "Routing", "capability_gap"]


def capability_gap(
    spec: TierSpec | None, tier: Tier, ctx: RequestContext, schema: SchemaSpec
) -> str | None:
    """Why ``tier`` cannot answer this request (K_model < K_req, family, size), or ``None``."""
    if isinstance(tier, FunctionTier) and not tier.accepts(schema):
        return f"tool does not answer schema {schema.name!r}"
    if spec is None:
        return None
    cap = spec.capability
    if cap.k_model < ctx.k_req:
        return f"capability: K_model {cap.k_model:.2f} < K_req {ctx.k_req:.2f}"
    if cap.families is not None and ctx.family not in cap.families:
        return f"capability: answers {list(cap.families)}, not {ctx.family!r}"
    if cap.max_depth is not None and ctx.depth > cap.max_depth:
        return f"capability: schema depth {ctx.depth} > {cap.max_depth}"
    if cap.max_fields is not None and ctx.fields > cap.max_fields:
        return f"capability: {ctx.fields} fields > {cap.max_fields}"
    return None


class Routing:
    """Plans requests with a policy, gates escalations, and learns from the outcomes.

    Parameters
    ----------
    policy:
        A :class:`RoutingPolicy` (``BanditPolicy`` over the growing RBF network, a static
        cascade, a baseline).
    featurizer:
        What the policy sees of a request (default: :class:`Featurizer`).
    specs:
        The tier matrix's rows by name: each tier's declared capability.
    gate:
        The what-if gate judging each escalation; ``None`` lets every planned escalation
        through and tries nothing beyond the plan.
    store:
        Where outcomes are kept (and replayed from, :meth:`replay`).
    factory, arms, history:
        ``factory(arms, specs)`` builds the policy again when the cascade gains a tier it has no
        arm for (:meth:`retier`), which then re-learns the last ``history`` outcomes.
    """

    def __init__(
        self,
        policy: RoutingPolicy,
        *,
        featurizer: Featurizer | None = None,
        specs: Mapping[str, TierSpec] | None = None,
        gate: EscalationGate | None = None,
        store: HistoryStore | None = None,
        bus: EventBus | None = None,
        factory: Callable[[list[str], Mapping[str, TierSpec]], RoutingPolicy] | None = None,
        arms: Sequence[str] = (),
        history: int = 5000,
    ) -> None:
        self.policy = policy
        self.featurizer = featurizer or Featurizer()
        self.specs = dict(specs or {})
        self.gate = gate
        self.store = store
        self.bus = bus if bus is not None else EventBus()
        self.factory = factory
        self.arms = list(arms)
        self.history = history
        self._lock = threading.Lock()
        self._health: dict[str, str] = {}

    def retier(self, names: Sequence[str], specs: Mapping[str, TierSpec] | None = None) -> None:
        """The cascade changed: take the new rows, and give a new tier an arm (re-learning)."""
        if specs is not None:
            self.specs = dict(specs)
        missing = [n for n in names if n not in self.arms]
        if self.factory is None or not missing:
            return
        with self._lock:
            self.arms += missing
            self.policy = self.factory(list(self.arms), self.specs)
            if self.gate is not None:
                self.gate.forget()
        self.replay(self.history)

    @property
    def static(self) -> bool:
        return self.policy.name == "static"

    def begin(self, schema: SchemaSpec, plan: RequestPlan, cascade: Sequence[Tier]) -> RouteSession:
        """Plan one request over ``cascade`` (published as ``route.decided``)."""
        ctx = self.featurizer.context(schema, plan.prompt)
        skipped: dict[str, str] = {}
        candidates = []
        for tier in cascade:
            gap = (
                None
                if self.static
                else capability_gap(self.specs.get(tier.name), tier, ctx, schema)
            )
            if gap is None:
                candidates.append(tier.name)
            else:
                skipped[tier.name] = gap
        with self._lock:
            chosen = (
                self.policy.plan(ctx, candidates)
                if candidates
                else RoutePlan(
                    policy=self.policy.name,
                    family=ctx.family,
                    tiers=[],
                    skipped={},
                    reason="no tier is capable of this request",
                )
            )
        chosen = chosen.model_copy(update={"skipped": {**skipped, **chosen.skipped}})
        self.bus.emit(
            EventType.ROUTE_DECIDED,
            workflow_id=plan.workflow_id,
            source="route",
            policy=chosen.policy,
            family=chosen.family,
            tiers=chosen.tiers,
            skipped=chosen.skipped,
            reason=chosen.reason,
            estimates={t: e.model_dump() for t, e in chosen.estimates.items()},
        )
        return RouteSession(self, ctx, chosen, list(cascade), plan.workflow_id, candidates)

    def learn(
        self, ctx: RequestContext, outcomes: list[TierOutcome], workflow_id: str | None
    ) -> None:
        """Teach the policy (and the gate) every tier's outcome on one request; keep them."""
        if not outcomes:
            return
        with self._lock:
            for o in outcomes:
                self.policy.observe(ctx, o.tier, o.success, o.cost)
                if self.gate is not None and o.position > 0:
                    self.gate.escalations.observe(ctx.family, o.tier, o.success)
            degraded = self.policy.degraded()
        if self.store is not None:
            self.store.append(
                outcomes,
                features=[float(v) for v in ctx.x],
                family=ctx.family,
                k_req=ctx.k_req,
                policy=self.policy.name,
                workflow_id=workflow_id,
            )
        self._announce(degraded, workflow_id)

    def learn_spans(
        self, family: str, spans: list[tuple[str, bool, float]], workflow_id: str | None
    ) -> None:
        """Teach the gate how span tiers' field answers fared on one request (``(tier,
        accepted, C)`` each); keep them."""
        if self.gate is None or not spans:
            return
        with self._lock:
            for tier, accepted, _ in spans:
                self.gate.spans.observe(family, tier, accepted)
        if self.store is not None:
            self.store.append_spans(family, spans, workflow_id)

    def _announce(self, degraded: dict[str, str], workflow_id: str | None) -> None:
        for tier in sorted(set(degraded) | set(self._health)):
            state = "degraded" if tier in degraded else "ok"
            previous = self._health.get(tier, "ok")
            if state == previous:
                continue
            self._health[tier] = state
            self.bus.emit(
                EventType.TIER_HEALTH,
                workflow_id=workflow_id,
                source="route",
                tier=tier,
                state=state,
                previous=previous,
                reason=degraded.get(tier, "probes succeeded: trusted again"),
            )

    def health(self, tier: str) -> str:
        """``ok`` or ``degraded`` (the policy stopped trusting it)."""
        return "degraded" if tier in self.policy.degraded() else "ok"

    def replay(self, limit: int) -> int:
        """Re-learn from the last ``limit`` stored outcomes, oldest first (and the gate from the
        last ``limit`` span answers); returns how many outcomes."""
        if self.store is None or limit <= 0:
            return 0
        import numpy as np

        rows = self.store.recent(limit)
        dims = self.featurizer.dims
        used = 0
        with self._lock:
            for r in rows:
                if len(r.features) != dims:
                    continue  # learned under other features: not comparable
                ctx = _stored_context(np.asarray(r.features, dtype=np.float64), r.family, r.k_req)
                self.policy.observe(ctx, r.tier, r.success, r.cost)
                if self.gate is not None and r.position > 0:
                    self.gate.escalations.observe(r.family, r.tier, r.success)
                used += 1
            self._health = dict.fromkeys(self.policy.degraded(), "degraded")
            if self.gate is not None:
                for family, tier, accepted in self.store.recent_spans(limit):
                    self.gate.spans.observe(family, tier, accepted)
        return used

    def stats(self) -> dict[str, TierStats]:
        return self.store.stats() if self.store is not None else {}

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def _stored_context(x: np.ndarray[Any, Any], family: str, k_req: float) -> RequestContext:
    return RequestContext(x=x, family=family, k_req=k_req, depth=0, fields=0, prompt_chars=0)


class RouteSession:
    """One request's route: the plan, the walk through it, and what is learned at the end."""

    def __init__(
        self,
        routing: Routing,
        ctx: RequestContext,
        plan: RoutePlan,
        cascade: list[Tier],
        workflow_id: str,
        capable: Sequence[str] = (),
    ) -> None:
        self.routing = routing
        self.ctx = ctx
        self.plan = plan
        self.workflow_id = workflow_id
        by_name = {t.name: t for t in cascade}
        self.tiers = [by_name[n] for n in plan.tiers]
        # the cascade's first tier able to take the request: a plan that starts past it jumps
        # straight to a dearer tier, and the gate judges that jump as it judges an escalation
        self._entry = capable[0] if capable else None
        # beyond the plan: tiers it judged not worth their price, which the gate may allow
        self._beyond = [
            by_name[n]
            for n in sorted(
                (n for n, why in plan.skipped.items() if why.startswith("not worth")),
                key=lambda n: -plan.estimates[n].optimistic if n in plan.estimates else 0.0,
            )
        ]
        self.refused: list[tuple[str, Decision[Any]]] = []  # (tier, decision)
        self.spans_refused: list[tuple[str, str, Decision[Any]]] = []  # (tier, field, decision)

    def walk(self) -> Iterator[tuple[Tier | None, Tier]]:
        """``(previous, tier)`` for each tier to try. The gate judges every escalation: a tier
        it refuses is passed over (the refusal kept, with its reason) and the next one judged;
        after the plan's tiers, those it stopped before are judged too. A plan that starts past
        the cascade's entry tier (the first able to take the request) is judged on that jump:
        a tier whose predicted return does not clear the gate is not paid for just because it
        was planned first."""
        queue = list(self.tiers)
        gated = self.routing.gate is not None
        prev: Tier | None = None
        # a plan that passes over the entry tier: its first tier is judged as an escalation
        # from there (a request whose every planned tier is refused goes to the human)
        entry = self._entry
        while entry is not None and queue and queue[0].name != entry:
            if self._allowed(entry, queue[0]):
                break
            queue.pop(0)
        while queue or (gated and prev is not None and self._beyond):
            tier = queue.pop(0) if queue else self._beyond.pop(0)
            if prev is not None and not self._allowed(prev.name, tier):
                continue
            yield prev, tier
            prev = tier

    def _allowed(self, prev: str, tier: Tier) -> bool:
        gate = self.routing.gate
        if gate is None:
            return True
        decision = gate.escalate(
            self.ctx.family,
            prev,
            tier.name,
            self.plan.estimates.get(tier.name),
            workflow_id=self.workflow_id,
        )
        if not decision.allowed:
            self.refused.append((tier.name, decision))
        return decision.allowed

    def span_allowed(self, tier: str, pointer: str, cost: float) -> bool:
        """Whether field ``pointer`` may be asked of span tier ``tier`` at an estimated C of
        ``cost`` (the gate judges it; without a gate, always). A refusal is kept."""
        gate = self.routing.gate
        if gate is None:
            return True
        estimate = self.plan.estimates.get(tier)
        decision = gate.span(
            self.ctx.family, pointer, tier, estimate, cost, workflow_id=self.workflow_id
        )
        if not decision.allowed:
            self.spans_refused.append((tier, pointer, decision))
        return decision.allowed

    def _refusals(self) -> dict[str, str]:
        """Every escalation the gate refused on this request: target -> reason."""
        out = {t: d.reason for t, d in self.refused}
        out.update({f"{t} (field {f or '/'})": d.reason for t, f, d in self.spans_refused})
        return out

    def _learn_spans(self, repairs: Sequence[RepairRecord]) -> None:
        """Teach the gate how each span tier's field answers fared (in-session repairs aside)."""
        spans = [(r.tier, r.accepted, r.cost) for r in repairs if r.tier != "local"]
        self.routing.learn_spans(self.ctx.family, spans, self.workflow_id)

    def finish(self, result: Result[Any]) -> None:
        """The answer came: put the plan (and any refusals) on ``result``, learn from every
        tier tried and every span tier asked."""
        refusals = self._refusals()
        result.route = self.plan.model_copy(update={"refused": refusals}) if refusals else self.plan
        answered = outcome(result)
        self.routing.learn(
            self.ctx, tier_outcomes(result.attempts, answered, result.tier), self.workflow_id
        )
        self._learn_spans(result.repairs)

    def fail(
        self, error: EpistemicYieldError, repairs: Sequence[RepairRecord] = ()
    ) -> EpistemicYieldError:
        """No tier answered: learn, and say why the human is asked (a refusal, a plan's stop)."""
        self.routing.learn(self.ctx, tier_outcomes(error.attempts, None, None), self.workflow_id)
        self._learn_spans(repairs)
        if self.refused or self.spans_refused:
            if self.refused:
                tier, decision = self.refused[-1]
            else:
                tier, _, decision = self.spans_refused[-1]
            why = "; ".join(f"to {t!r}: {r}" for t, r in self._refusals().items())
            msg = f"{error.message}; escalation refused by the what-if gate ({why})"
            return EscalationRefusedError(
                msg,
                refused_tier=tier,
                reason=decision.reason,
                schema=error.schema,
                prompt=error.prompt,
                spec=error.spec,
                workflow_id=error.workflow_id,
                attempts=error.attempts,
                ledger=error.ledger,
            )
        if self.plan.skipped:
            why = "; ".join(f"{t}: {r}" for t, r in self.plan.skipped.items())
            error.message = f"{error.message}; not tried ({self.plan.policy}): {why}"
            error.args = (error.message,)
        return error

"""Building a runtime's routing: the policy its settings name, its history, its gate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from coreason_runtime._exceptions import ConfigurationError
from coreason_runtime.route._features import Featurizer, ModelEmbedder
from coreason_runtime.route._gate import EscalationGate
from coreason_runtime.route._policy import (
    BanditPolicy,
    CostBook,
    LinearApproximator,
    RBFApproximator,
    RoutingPolicy,
    StaticCascade,
)
from coreason_runtime.route._routing import Routing
from coreason_runtime.route._store import HistoryStore

if TYPE_CHECKING:
    from coreason_runtime._coordinator import Coordinator
    from coreason_runtime._events import EventBus
    from coreason_runtime.bandit import GrowthBudget
    from coreason_runtime.route._matrix import RouteSettings, TierSpec

__all__ = ["make_policy", "prior_costs", "routing_for_runtime"]

#: The growing RBF network's settings for routing: contexts in [-1, 1]^d, success in [0, 1],
#: a few hundred requests to learn from, early units fine enough to tell requests of one
#: family apart (σ from 0.2). The memory is long (γ = 0.998, about 500 updates): a tier whose
#: quality changes is the drift watch's to catch (it resets that arm), so the estimates need
#: not pay for a short memory's variance on every request. Chosen on seed 1 (and checked on
#: seed 2) of bench_route_learned; the benchmark reports seed 7.
RBF_SETTINGS: dict[str, float] = {
    "delta_max": 0.8,
    "delta_min": 0.4,
    "delta_tau": 300.0,
    "err_min": 0.2,
    "sigma_min": 0.2,
    "sigma_max": 1.2,
    "gamma": 0.998,
    "reset_ratio": 0.0,  # drift is watched per tier (DriftWatch), not pooled
    "prune_every": 200,
    "prune_min_age": 300,
}


def prior_costs(specs: Sequence[TierSpec], weights: tuple[float, float]) -> dict[str, float]:
    """C assumed for a tier before it was ever tried: optimistic, 100 tokens in and 10 out at its
    weights (a tool tier: one unit of CPU), so an unseen tier is tried rather than ruled out
    by a guess; its observed C replaces this at once."""
    out = {}
    for s in specs:
        w_in = s.weight_in if s.weight_in is not None else weights[0]
        w_out = s.weight_out if s.weight_out is not None else weights[1]
        out[s.name] = w_out if s.kind == "tool" else 100.0 * w_in + 10.0 * w_out
    return out


def make_policy(
    name: str,
    arms: Sequence[str],
    dims: int,
    *,
    lam: float = 1e-4,
    alpha: float = 0.3,
    costs: Mapping[str, float] | None = None,
    growth: GrowthBudget | int | None = 64,
    bus: EventBus | None = None,
    drift: bool = True,
    seed: int = 0,
) -> RoutingPolicy:
    """A routing policy by name: ``learned`` (growing RBF network, drift-aware), ``linucb``,
    ``sw-linucb`` (the linear baselines, same planner), or ``static``.

    Raises
    ------
    ConfigurationError
        An unknown name.
    """
    from coreason_runtime.bandit import GrowingRBFNet, LinUCB, SlidingWindowLinUCB

    book = CostBook(prior=dict(costs or {}))
    k = max(len(arms), 1)
    if name == "static":
        return StaticCascade()
    if name == "learned":
        net = GrowingRBFNet(dims, k, growth, bus=bus, name="route", **RBF_SETTINGS)  # type: ignore[arg-type]
        return BanditPolicy(
            RBFApproximator(net),
            arms,
            lam=lam,
            alpha=alpha,
            costs=book,
            drift=drift,
            name="learned",
        )
    if name == "linucb":
        model = LinUCB(dims, k, seed=seed)
        return BanditPolicy(
            LinearApproximator(model),
            arms,
            lam=lam,
            alpha=alpha,
            costs=book,
            drift=False,
            name="linucb",
        )
    if name == "sw-linucb":
        sw = SlidingWindowLinUCB(dims, k, window=200, seed=seed)
        return BanditPolicy(
            LinearApproximator(sw, "sw-linucb"),
            arms,
            lam=lam,
            alpha=alpha,
            costs=book,
            drift=False,
            name="sw-linucb",
        )
    msg = f"unknown routing policy {name!r}; choose learned, linucb, sw-linucb or static"
    raise ConfigurationError(msg)


def _featurizer(rt: Coordinator, settings: RouteSettings) -> Featurizer:
    if not settings.embed_dims:
        return Featurizer()
    from coreason_runtime.models import load_model

    embedder = ModelEmbedder.from_model(load_model(rt.config.model), dims=settings.embed_dims)
    return Featurizer(embedder=embedder, embed_dims=settings.embed_dims)


def routing_for_runtime(
    rt: Coordinator, settings: RouteSettings, specs: Sequence[TierSpec]
) -> Routing:
    """The routing of ``rt``: its matrix's policy, a history under ``$COREASON_HOME/route``
    (replayed now), the what-if gate on escalation, events on ``rt.bus``."""
    featurizer = _featurizer(rt, settings)
    arms = [s.name for s in specs]
    cage = rt.budgets

    def factory(names: list[str], rows: Mapping[str, TierSpec]) -> RoutingPolicy:
        return make_policy(
            settings.policy,
            names,
            featurizer.dims,
            lam=settings.lam,
            alpha=settings.alpha,
            costs=prior_costs(list(rows.values()), (cage.weight_in, cage.weight_out)),
            growth=rt.bandit.budget("route", settings.growth_budget),
            bus=rt.bus,
        )

    gate = (
        EscalationGate(lam=settings.lam, bus=rt.bus)
        if settings.gate and settings.policy != "static"
        else None
    )
    rows = {s.name: s for s in specs}
    routing = Routing(
        factory(arms, rows),
        featurizer=featurizer,
        specs=rows,
        gate=gate,
        store=HistoryStore(rt.home / "route" / "history.sqlite3"),
        bus=rt.bus,
        factory=factory,
        arms=arms,
        history=settings.history,
    )
    routing.replay(settings.history)
    return routing

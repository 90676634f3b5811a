"""Routing: the tier matrix, a contextual bandit choosing tiers, what-if gates on escalation."""

from __future__ import annotations

from coreason_runtime.route._drift import DriftWatch
from coreason_runtime.route._features import (
    DEFAULT_FAMILIES,
    Featurizer,
    ModelEmbedder,
    RequestContext,
)
from coreason_runtime.route._gate import EscalationGate
from coreason_runtime.route._matrix import Capability, RouteSettings, TierSpec, load_matrix
from coreason_runtime.route._outcome import Outcome, TierOutcome, outcome, tier_outcomes
from coreason_runtime.route._policy import (
    Approximator,
    BanditPolicy,
    CostBook,
    LinearApproximator,
    RBFApproximator,
    RoutePlan,
    RoutingPolicy,
    StaticCascade,
    ThresholdRouter,
    TierEstimate,
    order_tiers,
)
from coreason_runtime.route._report import format_tiers, tier_rows
from coreason_runtime.route._routing import RouteSession, Routing, capability_gap
from coreason_runtime.route._runtime import make_policy, prior_costs, routing_for_runtime
from coreason_runtime.route._store import HistoryRow, HistoryStore, TierStats
from coreason_runtime.route._tiers import FunctionTier, TierMatrix

__all__ = [
    "DEFAULT_FAMILIES",
    "Approximator",
    "BanditPolicy",
    "Capability",
    "CostBook",
    "DriftWatch",
    "EscalationGate",
    "Featurizer",
    "FunctionTier",
    "HistoryRow",
    "HistoryStore",
    "LinearApproximator",
    "ModelEmbedder",
    "Outcome",
    "RBFApproximator",
    "RequestContext",
    "RoutePlan",
    "RouteSession",
    "RouteSettings",
    "Routing",
    "RoutingPolicy",
    "StaticCascade",
    "ThresholdRouter",
    "TierEstimate",
    "TierMatrix",
    "TierOutcome",
    "TierSpec",
    "TierStats",
    "capability_gap",
    "format_tiers",
    "load_matrix",
    "make_policy",
    "order_tiers",
    "outcome",
    "prior_costs",
    "routing_for_runtime",
    "tier_outcomes",
    "tier_rows",
]

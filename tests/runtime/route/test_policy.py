"""Routing policies: the cascade order, the bandit learning where to go, drift, baselines."""

from __future__ import annotations

import numpy as np
import pytest
from coreason_runtime.bandit import GrowingRBFNet, LinUCB
from coreason_runtime.route import (
    CostBook,
    DriftWatch,
    Featurizer,
    LinearApproximator,
    RBFApproximator,
    RequestContext,
    StaticCascade,
    ThresholdRouter,
    TierEstimate,
    make_policy,
    order_tiers,
)
from coreason_runtime.route._features import schema_shape
from coreason_runtime.tensor import SchemaSpec


def _est(p: float, cost: float, lam: float = 1e-3, n: int = 10) -> TierEstimate:
    r = p - lam * cost
    return TierEstimate(p=p, cost=cost, reward=r, optimistic=r, n=n)


# --- planning ------------------------------------------------------------------------------


def test_tiers_are_ordered_by_reward_per_success_probability() -> None:
    # cheap: r=0.5-0.1=0.4, r/p=0.8; dear: r=0.9-0.5=0.4, r/p=0.44; useless: r<0
    est = {"cheap": _est(0.5, 100), "dear": _est(0.9, 500), "useless": _est(0.1, 300)}
    order, skipped = order_tiers(["dear", "cheap", "useless"], est)
    assert order == ["cheap", "dear"]
    assert skipped["useless"].startswith("not worth its price")


def test_the_order_maximises_the_expected_reward_of_the_walk() -> None:
    est = {"a": _est(0.3, 100), "b": _est(0.8, 400), "c": _est(0.6, 150)}

    def value(order: list[str]) -> float:
        reach, total = 1.0, 0.0
        for t in order:
            total += reach * est[t].reward
            reach *= 1.0 - est[t].p
        return total

    import itertools

    order, _ = order_tiers(list(est), est)
    best = max(itertools.permutations(est), key=lambda o: value(list(o)))
    assert value(order) == pytest.approx(value(list(best)))


def test_tiers_without_data_keep_their_cascade_place() -> None:
    est = {"local": _est(0.5, 60, n=0), "oracle": _est(1.0, 0, n=0)}
    assert order_tiers(["local", "oracle"], est)[0] == ["local", "oracle"]


def test_at_least_one_tier_is_tried_when_none_pays() -> None:
    est = {"a": _est(0.1, 900), "b": _est(0.2, 800)}
    order, skipped = order_tiers(["a", "b"], est)
    assert order == ["b"] and set(skipped) == {"a"}


def test_the_static_cascade_plans_every_tier_in_order() -> None:
    ctx = Featurizer().context(SchemaSpec.from_user({"type": "object"}), "hello")
    plan = StaticCascade().plan(ctx, ["local", "oracle"])
    assert plan.tiers == ["local", "oracle"] and plan.policy == "static"


# --- features ------------------------------------------------------------------------------


def test_features_name_the_family_and_stay_in_the_unit_box() -> None:
    f = Featurizer()
    spec = SchemaSpec.from_user(
        {
            "type": "object",
            "properties": {
                "a": {"type": "number"},
                "b": {"type": "object", "properties": {"c": {"enum": [1]}}},
            },
        }
    )
    ctx = f.context(spec, "Differentiate x**3 and give the derivative")
    assert ctx.family == "calculus"
    assert ctx.x.shape == (f.dims,) and np.all(np.abs(ctx.x) <= 1.0)
    assert (ctx.depth, ctx.fields) == (2, 3)
    assert f.context(spec, "tell me a joke").family == "other"
    assert f.context(spec, "tell me a joke", family="physics").family == "physics"


def test_schema_shape_follows_refs_once() -> None:
    schema = {
        "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
        "$ref": "#/$defs/Node",
    }
    assert schema_shape(schema)[:2] == (1, 1)


# --- learning ------------------------------------------------------------------------------


def _ctx(f: Featurizer, family_word: str, i: int) -> RequestContext:
    return f.context(SchemaSpec.from_user({"type": "object"}), f"{family_word} problem {i}")


@pytest.mark.parametrize("kind", ["learned", "linucb"])
def test_the_bandit_learns_which_family_the_cheap_tier_fails(kind: str) -> None:
    f = Featurizer()
    policy = make_policy(
        kind, ["local", "oracle"], f.dims, lam=1e-4, costs={"local": 1500, "oracle": 4000}
    )
    rng = np.random.default_rng(0)
    for i in range(200):
        word = "differentiate" if i % 2 else "matrix"
        ctx = _ctx(f, word, i)
        local_ok = rng.random() < (0.9 if word == "differentiate" else 0.05)
        policy.observe(ctx, "local", local_ok, 1500.0)
        if not local_ok:
            policy.observe(ctx, "oracle", rng.random() < 0.95, 4000.0)
    easy = policy.plan(_ctx(f, "differentiate", 999), ["local", "oracle"])
    hard = policy.plan(_ctx(f, "matrix", 999), ["local", "oracle"])
    assert easy.tiers[0] == "local"
    # local at p≈0.05 costs more (λC = 0.15) than it is likely to earn: the oracle goes first
    assert hard.tiers[0] == "oracle"
    assert hard.estimates["local"].p < 0.3 < 0.7 < easy.estimates["local"].p


def test_a_tier_that_starts_failing_is_abandoned_within_a_bounded_number_of_requests() -> None:
    f = Featurizer()
    policy = make_policy(
        "learned", ["local", "oracle"], f.dims, costs={"local": 500, "oracle": 4000}
    )
    for i in range(60):
        policy.observe(_ctx(f, "differentiate", i), "local", True, 500.0)
    assert policy.plan(_ctx(f, "differentiate", 0), ["local", "oracle"]).tiers[0] == "local"
    used = 0
    for i in range(40):
        ctx = _ctx(f, "differentiate", 100 + i)
        plan = policy.plan(ctx, ["local", "oracle"])
        if plan.tiers[0] != "local":
            break
        used += 1
        policy.observe(ctx, "local", False, 500.0)
        policy.observe(ctx, "oracle", True, 4000.0)
    assert 1 <= used <= 6
    assert "local" in policy.degraded()


def test_drift_watch_alarms_after_at_most_h_over_p_minus_delta_failures() -> None:
    watch = DriftWatch(delta=0.2, threshold=3.0)
    for _ in range(50):
        assert not watch.observe("t", True, 0.9)
    fails = 0
    while not watch.observe("t", False, 0.9):
        fails += 1
    assert fails + 1 <= 5  # ⌈3 / 0.7⌉
    assert watch.held(["t"]) and watch.alarms("t") == 1


def test_a_held_tier_is_probed_and_trusted_again_after_successes() -> None:
    watch = DriftWatch(probe_every=3, recover=2)
    for _ in range(10):
        if watch.observe("t", False, 0.95):
            break
    assert "t" in watch.reasons()
    probes = [watch.probe(["t"]) for _ in range(6)]
    assert probes.count("t") == 2
    watch.observe("t", True, 0.5)
    watch.observe("t", True, 0.5)
    assert watch.reasons() == {}


def test_a_tier_that_stays_broken_is_probed_at_doubling_intervals() -> None:
    watch = DriftWatch(probe_every=3, recover=2, max_interval=12)
    while not watch.observe("t", False, 0.95):
        pass
    probes = []
    for plan in range(1, 40):
        if watch.probe(["t"]) == "t":
            probes.append(plan)
            watch.observe("t", False, 0.5)  # the probe fails
    assert probes == [3, 9, 21, 33]  # 3, then 6, 12, 12 (the cap) plans apart


def test_a_probe_waits_for_a_request_the_held_tier_would_take_first() -> None:
    f = Featurizer()
    policy = make_policy("learned", ["cas", "kinetic"], f.dims, costs={"cas": 10, "kinetic": 300})
    for i in range(60):
        policy.observe(_ctx(f, "differentiate", i), "cas", True, 10.0)
        policy.observe(_ctx(f, "matrix", i), "kinetic", True, 300.0)
    i = 100
    while "kinetic" not in policy.degraded():
        i += 1
        policy.observe(_ctx(f, "matrix", i), "kinetic", False, 300.0)
    # the probe falls due 10 plans after the alarm; a derivative the CAS answers for 10 C
    # is no request to spend it on (until it is a whole interval overdue)
    for j in range(15):
        plan = policy.plan(_ctx(f, "differentiate", 200 + j), ["cas", "kinetic"])
        assert plan.tiers == ["cas"], plan
    plan = policy.plan(_ctx(f, "matrix", 300), ["kinetic"])  # the CAS does not do matrices
    assert plan.tiers == ["kinetic"] and plan.reason.startswith("probing kinetic")


def test_the_cost_book_learns_per_tier_and_family() -> None:
    book = CostBook(prior={"oracle": 100.0})
    assert book.predict("oracle", "calculus") == 100.0
    book.observe("oracle", "calculus", 300.0)
    book.observe("oracle", "calculus", 500.0)
    # the prior counts as one observation: (100 + 300 + 500) / 3
    assert book.predict("oracle", "calculus") == pytest.approx(300.0)
    assert book.predict("oracle", "physics") == pytest.approx(300.0)  # the tier's average
    for _ in range(40):
        book.observe("oracle", "calculus", 1000.0)
    # past 1/rate observations it is a moving average: a change of price is followed
    assert book.predict("oracle", "calculus") == pytest.approx(1000.0, rel=1e-3)


def test_one_costly_first_request_does_not_price_a_tier_out() -> None:
    # a first oracle request that needed three attempts (errors fed back) costs 12000: the
    # cost alone (λC = 1.2) would rule the oracle out for good, since it is never tried again
    f = Featurizer()
    policy = make_policy("learned", ["kinetic", "oracle"], f.dims, costs={"oracle": 2100.0})
    ctx = _ctx(f, "matrix", 0)
    policy.observe(ctx, "kinetic", False, 300.0)
    policy.observe(ctx, "oracle", True, 12000.0)
    est = policy.estimates(_ctx(f, "matrix", 1), ["kinetic", "oracle"])["oracle"]
    assert est.cost == pytest.approx(7050.0)  # shrunk toward the prior, not replaced
    # its success is learned apart from its C: one verified answer reads as p ≈ 1, not as
    # the reward 1 − 1.2 it earned, and the oracle is still worth trying
    assert est.p > 0.9 and est.optimistic > 0
    book = CostBook()  # without a prior, the first observation is the estimate
    book.observe("oracle", "algebra", 12000.0)
    assert book.predict("oracle", "algebra") == 12000.0


def test_threshold_router_routes_once_by_its_learned_probability() -> None:
    f = Featurizer()
    router = ThresholdRouter(f.dims, epsilon=0.0)
    for i in range(300):
        word = "differentiate" if i % 2 else "matrix"
        ctx = _ctx(f, word, i)
        router.plan(ctx, ["weak", "strong"])
        router.observe(ctx, "weak", word == "differentiate", 1.0)
    assert router.plan(_ctx(f, "differentiate", 1), ["weak", "strong"]).tiers == ["weak"]
    plan = router.plan(_ctx(f, "matrix", 1), ["weak", "strong"])
    assert plan.tiers == ["strong"] and plan.skipped == {"weak": "routed once, no escalation"}


def test_approximators_share_one_interface() -> None:
    x = np.zeros(4)
    for approx in (RBFApproximator(GrowingRBFNet(4, 2)), LinearApproximator(LinUCB(4, 2))):
        mean, width = approx.predict(x)
        assert mean.shape == width.shape == (2,) and np.all(width > 0)
        approx.update(x, 1, 0.5)
        approx.reset_arm(1)


def test_reset_arm_restores_an_arms_uncertainty_only() -> None:
    net = GrowingRBFNet(3, 2)
    x = np.full(3, 0.2)
    for _ in range(50):
        net.update(x, 0, 1.0)
        net.update(x, 1, 1.0)
    before = net.variance(x)
    net.reset_arm(0)
    after = net.variance(x)
    assert after[0] > 10 * before[0] and after[1] == pytest.approx(before[1])
    assert net.predict(x)[0] == pytest.approx(1.0, abs=0.1)  # the weights are kept


def test_a_model_embedder_adds_bounded_prompt_features() -> None:
    from coreason_runtime.route import ModelEmbedder

    vocab = {
        w: i
        for i, w in enumerate(["differentiate", "integrate", "matrix", "the", "of", "x", "sin"])
    }
    table = np.random.default_rng(0).normal(size=(len(vocab), 16))
    embed = ModelEmbedder(
        lambda t: [vocab[w] for w in t.lower().split() if w in vocab], table, dims=4
    )
    f = Featurizer(embedder=embed, embed_dims=4)
    spec = SchemaSpec.from_user({"type": "object"})
    a = f.context(spec, "differentiate sin of x").x
    b = f.context(spec, "the matrix of x").x
    assert a.shape == (f.dims,) == (Featurizer().dims + 4,)
    assert np.all(np.abs(a[-4:]) <= 1.0) and not np.allclose(a[-4:], b[-4:])
    assert np.allclose(embed("nothing known"), 0.0)

"""The routing benchmark's workload: six task families whose answers SymPy (or the sentence)
verifies without a stored answer, and tiers with success and cost profiles.

Each family's pydantic schema carries its verifier as a validator, so an answer "counts" only
when it is right (a wrong answer fails validation, is fed back, retried, escalated) — the same
check issue 22's ``verify=`` will run. Tiers are scripted with *profiles*: tier ``t`` answers a
request of family ``f`` and latent difficulty ``d ∈ [0, 1)`` correctly on an attempt with
``p = σ(4·(s_tf − d))``; otherwise it gives a plausible wrong answer (a coefficient off, a root
shifted, the ½ forgotten). Whether an attempt is right is a hash of (seed, request, tier,
attempt), so every policy faces the same draws (common random numbers). The CAS tier is real:
SymPy differentiates or integrates the expression in the prompt and declines other schemas.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import sympy as sp
from coreason_runtime.route import FunctionTier
from coreason_runtime.tensor import BlackBoxTier, Meter, SchemaSpec, TierOutput, TierRequest
from pydantic import BaseModel, model_validator

from benchmarks import _route_verified as V
from benchmarks.verified_tasks import TASKS

X = sp.Symbol("x")
FAMILIES = ("derivative", "antiderivative", "roots", "eigen", "kinematics", "extract")
#: the share of requests drawn from the verified-answers task set
VERIFIED_SHARE = 0.5


def _same(a: str, b: sp.Expr) -> bool:
    try:
        return bool(sp.simplify(sp.sympify(a) - b) == 0)
    except (sp.SympifyError, TypeError, SyntaxError):
        return False


class Derivative(BaseModel):
    expression: str
    derivative: str

    @model_validator(mode="after")
    def _verified(self) -> Derivative:
        if not _same(self.derivative, sp.diff(sp.sympify(self.expression), X)):
            raise ValueError("the derivative is wrong (SymPy differentiated the expression)")
        return self


class Antiderivative(BaseModel):
    integrand: str
    antiderivative: str

    @model_validator(mode="after")
    def _verified(self) -> Antiderivative:
        try:
            back = sp.diff(sp.sympify(self.antiderivative), X)
        except (sp.SympifyError, TypeError, SyntaxError) as e:
            raise ValueError(f"not an expression: {e}") from e
        if not _same(self.integrand, back):
            raise ValueError("its derivative is not the integrand")
        return self


class Roots(BaseModel):
    polynomial: str
    roots: list[str]

    @model_validator(mode="after")
    def _verified(self) -> Roots:
        poly = sp.Poly(sp.sympify(self.polynomial), X)
        found = {sp.nsimplify(r) for r in self.roots}
        if len(found) != len(sp.roots(poly)) or any(poly.eval(r) != 0 for r in found):
            raise ValueError("not every root of the polynomial, or not roots")
        return self


class Eigenvalues(BaseModel):
    matrix: list[list[int]]
    eigenvalues: list[str]

    @model_validator(mode="after")
    def _verified(self) -> Eigenvalues:
        charpoly = sp.Matrix(self.matrix).charpoly(X).as_expr()
        vals = [sp.nsimplify(v) for v in self.eigenvalues]
        if len(vals) != len(self.matrix) or any(charpoly.subs(X, v) != 0 for v in vals):
            raise ValueError(
                "not the eigenvalues (they must be roots of the characteristic polynomial)"
            )
        if sp.expand(math.prod((X - v for v in vals), start=sp.Integer(1)) - charpoly) != 0:
            raise ValueError("multiplicities do not match the characteristic polynomial")
        return self


class KineticEnergy(BaseModel):
    mass_kg: float
    speed_m_s: float
    energy: float
    unit: str

    @model_validator(mode="after")
    def _verified(self) -> KineticEnergy:
        want = 0.5 * self.mass_kg * self.speed_m_s**2
        if self.unit != "J" or not math.isclose(self.energy, want, rel_tol=1e-6):
            raise ValueError("E = ½·m·v² in joules (J)")
        return self


class Birth(BaseModel):
    sentence: str
    person: str
    year: int

    @model_validator(mode="after")
    def _verified(self) -> Birth:
        m = re.search(r"(.+?) was born in \w+ in (\d{4})", self.sentence)
        if m is None or (m.group(1), int(m.group(2))) != (self.person, self.year):
            raise ValueError("the person and the year must be the ones the sentence names")
        return self


SCHEMAS: dict[str, type[BaseModel]] = {
    "derivative": Derivative,
    "antiderivative": Antiderivative,
    "roots": Roots,
    "eigen": Eigenvalues,
    "kinematics": KineticEnergy,
    "extract": Birth,
}

NAMES = ["Ada Lovelace", "Emmy Noether", "Alan Turing", "Sofia Kovalevskaya", "Kurt Gödel"]
CITIES = ["London", "Erlangen", "Moscow", "Brno", "Paris"]


@dataclass(frozen=True)
class Task:
    """One request: its family, prompt, latent difficulty, and right and wrong answers.

    A request drawn from the verified-answers task set also carries its problem's index
    (``problem``) and schema (``model``): it is verified by that problem's own verifier.
    """

    rid: int
    family: str
    prompt: str
    difficulty: float
    right: dict[str, Any]
    wrong: dict[str, Any]
    problem: int | None = None
    model: type[BaseModel] | None = None

    @property
    def schema(self) -> type[BaseModel]:
        return self.model if self.model is not None else SCHEMAS[self.family]

    @property
    def verify(self) -> Any:
        """The request's ``verify=`` (``None``: the schema's own validator verifies)."""
        return None if self.problem is None else V.policy(TASKS[self.problem])


def _poly_terms(rng: random.Random, n: int) -> sp.Expr:
    funcs = [
        lambda k: X**k,
        lambda k: sp.sin(k * X),
        lambda k: sp.exp(k * X),
        lambda k: X**k * sp.cos(X),
    ]
    return sum(
        rng.randint(1, 5) * rng.choice(funcs[: 1 + min(n, 3)])(rng.randint(1, 4)) for _ in range(n)
    )


def make_task(rid: int, family: str, rng: random.Random) -> Task:
    """A problem of ``family``; harder instances (more terms, bigger matrices) have higher d."""
    size = rng.randint(1, 4)
    d = min(0.999, max(0.0, (size - 1) / 4 + rng.uniform(0.0, 0.25)))
    if family == "derivative":
        e = _poly_terms(rng, size)
        de = sp.diff(e, X)
        return Task(
            rid,
            family,
            f"Differentiate {e} with respect to x.",
            d,
            {"expression": str(e), "derivative": str(de)},
            {"expression": str(e), "derivative": str(de + rng.randint(1, 3) * X)},
        )
    if family == "antiderivative":
        e = sum(rng.randint(1, 6) * X ** rng.randint(0, 4) for _ in range(size)) + (
            sp.exp(X) if size > 2 else 0
        )
        a = sp.integrate(e, X)
        return Task(
            rid,
            family,
            f"Integrate {e} with respect to x: give an antiderivative.",
            d,
            {"integrand": str(e), "antiderivative": str(a)},
            {"integrand": str(e), "antiderivative": str(a * 2)},
        )
    if family == "roots":
        roots = rng.sample(range(-6, 7), min(size + 1, 4))
        p = sp.expand(math.prod((X - r for r in roots), start=sp.Integer(1)))
        wrong = [str(r) for r in roots]
        wrong[0] = str(roots[0] + 1)
        return Task(
            rid,
            family,
            f"Find the roots of the polynomial {p}.",
            d,
            {"polynomial": str(p), "roots": [str(r) for r in roots]},
            {"polynomial": str(p), "roots": wrong},
        )
    if family == "eigen":
        n = 2 if size < 3 else 3
        diag = [rng.randint(-5, 5) for _ in range(n)]
        m = [
            [diag[i] if i == j else (rng.randint(-3, 3) if j > i else 0) for j in range(n)]
            for i in range(n)
        ]
        return Task(
            rid,
            family,
            f"Give the eigenvalues of the matrix {m}.",
            d,
            {"matrix": m, "eigenvalues": [str(v) for v in diag]},
            {"matrix": m, "eigenvalues": [str(diag[0] + 1), *map(str, diag[1:])]},
        )
    if family == "kinematics":
        m_kg, v = float(rng.randint(1, 40)), float(rng.randint(1, 30))
        return Task(
            rid,
            family,
            f"A mass of {m_kg:g} kg moves at {v:g} m/s (velocity). What is its kinetic energy?",
            d,
            {"mass_kg": m_kg, "speed_m_s": v, "energy": 0.5 * m_kg * v * v, "unit": "J"},
            {"mass_kg": m_kg, "speed_m_s": v, "energy": m_kg * v * v, "unit": "J"},
        )
    name, city, year = rng.choice(NAMES), rng.choice(CITIES), rng.randint(1700, 1990)
    s = f"{name} was born in {city} in {year}" + (", long before the war." if size > 2 else ".")
    return Task(
        rid,
        family,
        f"Extract the person and the birth year: {s}",
        d,
        {"sentence": s, "person": name, "year": year},
        {"sentence": s, "person": name, "year": year + 10},
    )


def verified_task(rid: int, index: int) -> Task:
    """Problem ``index`` of the verified-answers task set as request ``rid``."""
    p = TASKS[index]
    right, wrong = V.answers(index)
    return Task(rid, V.FAMILY[p.kind], p.prompt, V.difficulty(p), right, wrong, index, p.schema)


def workload(n: int, seed: int, verified: float = VERIFIED_SHARE) -> list[Task]:
    """``n`` requests: each drawn from the verified-answers task set with probability
    ``verified`` (a problem uniformly at random), else from a scripted family (uniformly)."""
    rng = random.Random(seed)
    return [
        verified_task(i, rng.randrange(len(TASKS)))
        if rng.random() < verified
        else make_task(i, rng.choice(FAMILIES), rng)
        for i in range(n)
    ]


# --- tiers ---------------------------------------------------------------------------------

#: s_tf: tier skill per family on the logit scale of p = σ(4·(s − d)).
SKILL: dict[str, dict[str, float]] = {
    # SmolLM2-135M-like: some simple calculus, little else, decent at copying a name and year
    "local": {
        "derivative": 0.35,
        "antiderivative": 0.15,
        "roots": 0.05,
        "eigen": -0.4,
        "kinematics": 0.1,
        "extract": 0.85,
        "limit": 0.0,
        "physics": 0.05,
    },
    # a mid-size model behind an OpenAI-compatible server (vLLM, SGLang, coreason serve)
    "kinetic": {
        "derivative": 0.8,
        "antiderivative": 0.65,
        "roots": 0.6,
        "eigen": 0.3,
        "kinematics": 0.6,
        "extract": 1.1,
        "limit": 0.55,
        "physics": 0.6,
    },
    # a frontier oracle
    "oracle": {
        "derivative": 1.4,
        "antiderivative": 1.3,
        "roots": 1.3,
        "eigen": 1.1,
        "kinematics": 1.3,
        "extract": 1.5,
        "limit": 1.25,
        "physics": 1.3,
    },
}
#: C weights per tier: (w_in, w_out), in the ratio of their prices.
WEIGHTS: dict[str, tuple[float, float]] = {
    "cas": (1.0, 1.0),
    "local": (1.0, 3.0),
    "kinetic": (3.0, 9.0),
    "oracle": (15.0, 60.0),
}


class Clock:
    """The request being served (the bench sets it before each generate) and the drift."""

    def __init__(self, degrade_at: int, degrade_by: float, degrades: str = "local") -> None:
        self.local = threading.local()
        self.degrade_at, self.degrade_by, self.degrades = degrade_at, degrade_by, degrades

    @property
    def task(self) -> Task:
        task: Task = self.local.task
        return task

    def skill(self, tier: str, task: Task) -> float:
        s = SKILL[tier][task.family]
        if tier == self.degrades and task.rid >= self.degrade_at:
            s -= self.degrade_by  # e.g. the local model was replaced by a broken quantisation
        return s

    def p_attempt(self, tier: str, task: Task) -> float:
        return 1.0 / (1.0 + math.exp(-4.0 * (self.skill(tier, task) - task.difficulty)))


def draw(seed: int, rid: int, tier: str, attempt: int) -> float:
    h = hashlib.blake2b(f"{seed}:{rid}:{tier}:{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


class ProfileTier(BlackBoxTier):
    """A model tier answering by its profile: right with probability p, else plausibly wrong."""

    def __init__(self, name: str, clock: Clock, seed: int) -> None:
        self.name = name
        self.clock = clock
        self.seed = seed

    @property
    def model_name(self) -> str:
        return f"profile:{self.name}"

    def complete(self, request: TierRequest, meter: Meter) -> TierOutput:
        task = self.clock.task
        tokens_in = sum(len(m["content"]) for m in request.messages) // 4 + 8
        meter.charge(tokens_in=tokens_in)
        u = draw(self.seed, task.rid, self.name, request.attempt)
        text = json.dumps(task.right if u < self.clock.p_attempt(self.name, task) else task.wrong)
        tokens_out = max(8, len(text) // 3)
        meter.check(tokens_out=tokens_out)
        meter.charge(tokens_out=tokens_out)
        return TierOutput(
            text=text, tokens_in=tokens_in, tokens_out=tokens_out, model=self.model_name
        )


_CAS_PROMPT = re.compile(
    r"(?:Differentiate|Integrate|Find an antiderivative of) (.+?) with respect to x"
)
_CAS_SCHEMAS = ("Derivative", "Antiderivative", "DerivativeAnswer", "AntiderivativeAnswer")


def _cas_value(schema: str, prompt: str) -> dict[str, str]:
    m = _CAS_PROMPT.search(prompt)
    if m is None:
        raise ValueError("no expression in x to work on")
    e = sp.sympify(m.group(1))
    if schema == "Derivative":
        return {"expression": str(e), "derivative": str(sp.diff(e, X))}
    if schema == "DerivativeAnswer":
        return {"derivative": str(sp.diff(e, X))}
    if schema == "AntiderivativeAnswer":
        return {"antiderivative": str(sp.integrate(e, X))}
    return {"integrand": str(e), "antiderivative": str(sp.integrate(e, X))}


def _cas(spec: SchemaSpec, prompt: str) -> dict[str, str]:
    return _cas_value(spec.name, prompt)


def cas_answers(task: Task) -> bool:
    """Whether the CAS tier's answer to ``task`` is verified (for the optimum's plans)."""
    if task.problem is None:
        return task.family in ("derivative", "antiderivative")
    return _cas_verified(task.problem)


@cache
def _cas_verified(index: int) -> bool:
    p = TASKS[index]
    if p.schema.__name__ not in _CAS_SCHEMAS:
        return False
    try:
        value = p.schema.model_validate(_cas_value(p.schema.__name__, p.prompt))
    except ValueError:
        return False
    return not p.check()(value.model_dump())


def cas_tier() -> FunctionTier:
    """SymPy as a tool tier: derivatives and antiderivatives only, priced by its CPU time."""
    return FunctionTier("cas", _cas, accepts=lambda s: s.name in _CAS_SCHEMAS)


Walk = Callable[[tuple[str, ...]], tuple[float, float, float]]
#: attempts a profile tier gets on one request (a repeated failed output leaves the tier)
TRIES = 2


def _walker(
    clock: Clock, task: Task, lam: float, costs: dict[str, float], tiers: list[str]
) -> Walk:
    """(reward, C, accuracy) expected of walking an order of tiers on ``task`` under the true
    profiles. A tier gets 2 attempts at most: its slip is deterministic (the same wrong answer
    each time), and the correction loop leaves a tier whose output repeats a failed one."""

    def stats(t: str) -> tuple[float, float]:
        if t == "cas":
            ok = cas_answers(task)
            return (1.0 if ok else 0.0), costs["cas"]
        p = clock.p_attempt(t, task)
        solve = 1.0 - (1.0 - p) ** TRIES
        attempts = solve / p if p > 0 else float(TRIES)
        return solve, costs[t] * attempts

    s = {t: stats(t) for t in tiers}

    def walk(order: tuple[str, ...]) -> tuple[float, float, float]:
        reach, total, cost, acc = 1.0, 0.0, 0.0, 0.0
        for t in order:
            p, c = s[t]
            total += reach * (p - lam * c)
            cost += reach * c
            acc += reach * p
            reach *= 1.0 - p
        return total, cost, acc

    return walk


def best_plan(walk: Walk, tiers: list[str]) -> tuple[tuple[str, ...], tuple[float, float, float]]:
    """The order of tiers whose walk earns the most (every ordered subset enumerated; asking
    nobody earns 0), and its (reward, C, accuracy)."""
    import itertools

    best: tuple[tuple[str, ...], tuple[float, float, float]] = ((), (0.0, 0.0, 0.0))
    for k in range(1, len(tiers) + 1):
        for order in itertools.permutations(tiers, k):
            v = walk(order)
            if v[0] > best[1][0]:
                best = (order, v)
    return best


def plan_values(
    clock: Clock, task: Task, lam: float, costs: dict[str, float], tiers: list[str]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(reward, C, accuracy) expected of the best plan over ``tiers`` on ``task`` under the
    true profiles, and of the static cascade ``tiers`` in order."""
    walk = _walker(clock, task, lam, costs, tiers)
    return best_plan(walk, tiers)[1], walk(tuple(tiers))


def clairvoyant_order(
    clock: Clock, task: Task, lam: float, costs: dict[str, float], tiers: list[str]
) -> list[str]:
    """The best plan's tiers on ``task``, knowing every profile (a bound, not a policy)."""
    return list(best_plan(_walker(clock, task, lam, costs, tiers), tiers)[0])


def true_value(
    clock: Clock, task: Task, lam: float, costs: dict[str, float], tiers: list[str]
) -> float:
    """The best expected reward any plan over ``tiers`` could earn on ``task``."""
    return plan_values(clock, task, lam, costs, tiers)[0][0]


def attempt_cost(tier: str, task: Task) -> float:
    """C of one first attempt (the retries cost a little more: the error is fed back)."""
    w_in, w_out = WEIGHTS[tier]
    tokens_in = (len(task.prompt) + 190) // 4 + 8  # the system prompt is ~190 characters
    tokens_out = max(8, len(json.dumps(task.right)) // 3)
    return w_in * tokens_in + w_out * tokens_out


Answer = Callable[[SchemaSpec, str], Any]

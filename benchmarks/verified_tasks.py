"""The verified-answers task set: 100 problems a researcher would pose, each with a verifier.

Six kinds — derivatives, antiderivatives, roots, eigenvalues, limits, and physics quantities
with units — each asked for one field. Every verifier is built from the problem statement
alone (the expression, the matrix, the physical formula): SymPy or pint checks the answer,
no stored answer is consulted. ``expected`` is computed here only for the benchmark's
independent audit of "wrong but verified" answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, Field

__all__ = ["TASKS", "Task"]

Short = Annotated[str, Field(max_length=14)]


class DerivativeAnswer(BaseModel):
    derivative: str = Field(max_length=40, description="the derivative, as an expression in x")


class AntiderivativeAnswer(BaseModel):
    antiderivative: str = Field(max_length=40, description="an antiderivative, in x")


class RootsAnswer(BaseModel):
    roots: list[Short] = Field(max_length=4, description="every real root, one per item")


class EigenvaluesAnswer(BaseModel):
    eigenvalues: list[Short] = Field(max_length=3, description="every eigenvalue")


class LimitAnswer(BaseModel):
    limit: str = Field(max_length=20, description="the value of the limit ('oo' for infinity)")


class QuantityAnswer(BaseModel):
    value: str = Field(max_length=24, description="a number with its unit, e.g. '12 J'")


@dataclass(frozen=True)
class Task:
    """One problem: its kind, the question, the schema, and how to build its verifier."""

    kind: str
    prompt: str
    schema: type[BaseModel]
    verifier: tuple[str, dict[str, Any]]  # (name in coreason_runtime.verifiers, arguments)

    def check(self) -> Any:
        from coreason_runtime import verifiers as V

        return getattr(V, self.verifier[0])(**self.verifier[1])


DERIVATIVES = [
    "x**3 + 2*x", "sin(x)", "x**2*sin(x)", "exp(2*x)", "log(x)", "x**4 - 3*x**2", "cos(3*x)",
    "sqrt(x)", "1/x", "x*exp(x)", "tan(x)", "5*x**2 + 7", "x**5", "sin(x)*cos(x)",
    "log(x**2 + 1)", "exp(x)/x", "(x + 1)**3", "x**3 - x", "2*sin(x) + 3*cos(x)", "atan(x)",
]  # fmt: skip
ANTIDERIVATIVES = [
    "3*x**2", "2*x + 1", "cos(x)", "exp(x)", "1/x", "x**3", "sin(x)", "4*x**3 - 2*x",
    "exp(3*x)", "x*exp(x)", "1/(1 + x**2)", "2*x*cos(x**2)", "6*x**5", "x**2 + x", "cos(2*x)",
    "5", "1/sqrt(x)", "x*cos(x)", "3*exp(x) + 2*x", "sec(x)**2",
]  # fmt: skip
ROOTS = [
    "x**2 - 5*x + 6", "x**2 - 4", "x**2 + 2*x - 3", "x**2 - 9", "2*x - 8", "x**2 - 7*x + 12",
    "x**2 - 1", "x**3 - x", "x**2 + x - 6", "3*x + 9", "x**2 - 6*x + 9", "x**2 - 2*x - 15",
    "x**2 - 16", "x**3 - 4*x", "x**2 + 5*x + 4", "x**2 - 10*x + 21",
]  # fmt: skip
EIGENVALUES = [
    [[2, 0], [0, 3]], [[1, 2], [2, 1]], [[4, 1], [2, 3]], [[2, 1], [1, 2]], [[5, 0], [0, -1]],
    [[0, 1], [1, 0]], [[3, 1], [0, 2]], [[1, 1], [0, 1]], [[6, 2], [2, 3]],
    [[2, 0, 0], [0, 3, 0], [0, 0, 4]], [[1, 0], [0, 1]], [[4, 2], [1, 3]], [[7, 0], [0, 2]],
    [[0, 2], [2, 0]],
]  # fmt: skip
LIMITS: list[tuple[str, Any]] = [
    ("sin(x)/x", 0), ("(x**2 - 1)/(x - 1)", 1), ("(1 + 1/x)**x", "oo"), ("(2*x + 1)/x", "oo"),
    ("(exp(x) - 1)/x", 0), ("x*sin(1/x)", "oo"), ("(x**2 + 3*x)/x", 0), ("1/x**2", "oo"),
    ("(1 - cos(x))/x**2", 0), ("(3*x**2 + 1)/(x**2 + 2)", "oo"), ("log(x)/x", "oo"),
    ("(x**3 - 8)/(x - 2)", 2), ("tan(x)/x", 0), ("(sqrt(x + 4) - 2)/x", 0), ("x**2", 3),
]  # fmt: skip
PHYSICS: list[tuple[str, str, str]] = [
    ("A 2 kg mass moves at 3 m/s. What is its kinetic energy?", "J", "0.5*2 kg*(3 m/s)**2"),
    ("What force accelerates a 5 kg mass at 2 m/s^2?", "N", "5 kg*2 m/s**2"),
    (
        "A 3 kg object is lifted 4 m (g = 9.8 m/s^2). What potential energy does it gain?",
        "J",
        "3 kg*9.8 m/s**2*4 m",
    ),
    ("A car travels 100 km in 2 h. What is its average speed in km/h?", "km/h", "100 km/(2 h)"),
    ("What is the momentum of a 4 kg ball moving at 5 m/s?", "kg*m/s", "4 kg*5 m/s"),
    ("A 60 W bulb runs for 2 h. How much energy does it use, in kWh?", "kWh", "60 W*2 h"),
    ("A 12 V battery drives a 3 A current. What power is delivered?", "W", "12 V*3 A"),
    ("A 10 ohm resistor carries 2 A. What is the voltage across it?", "V", "10 ohm*2 A"),
    ("What pressure does a 200 N force exert on 0.5 m^2?", "Pa", "200 N/(0.5 m**2)"),
    (
        "A spring with k = 100 N/m is stretched by 0.2 m. How much energy does it store?",
        "J",
        "0.5*100 N/m*(0.2 m)**2",
    ),
    ("How far does light (3e8 m/s) travel in 2 s?", "m", "3e8 m/s*2 s"),
    ("How much work does a 20 N force do over 3 m?", "J", "20 N*3 m"),
    ("A 1500 kg car accelerates at 2 m/s^2. What is the net force?", "N", "1500 kg*2 m/s**2"),
    ("What is the weight of a 70 kg person (g = 9.8 m/s^2)?", "N", "70 kg*9.8 m/s**2"),
    ("A 2 A current flows for 30 s. How much charge passes?", "C", "2 A*30 s"),
]


def _tasks() -> list[Task]:
    out = [
        Task(
            "derivative",
            f"Differentiate {f} with respect to x.",
            DerivativeAnswer,
            ("derivative", {"of": f, "result": "derivative"}),
        )
        for f in DERIVATIVES
    ]
    out += [
        Task(
            "antiderivative",
            f"Find an antiderivative of {f} with respect to x.",
            AntiderivativeAnswer,
            ("antiderivative", {"of": f, "result": "antiderivative"}),
        )
        for f in ANTIDERIVATIVES
    ]
    out += [
        Task("roots", f"Find every real root of {f} = 0.", RootsAnswer,
             ("roots", {"of": f, "result": "roots"}))
        for f in ROOTS
    ]  # fmt: skip
    out += [
        Task("eigenvalues", f"What are the eigenvalues of the matrix {m}?", EigenvaluesAnswer,
             ("eigenvalues", {"matrix": m, "result": "eigenvalues"}))
        for m in EIGENVALUES
    ]  # fmt: skip
    out += [
        Task("limit", f"What is the limit of {f} as x approaches {at}?", LimitAnswer,
             ("limit", {"of": f, "at": at, "result": "limit"}))
        for f, at in LIMITS
    ]  # fmt: skip
    out += [
        Task("physics", f"{q} Answer with a number and its unit.", QuantityAnswer,
             ("units", {"result": "value", "unit": unit, "equals": formula}))
        for q, unit, formula in PHYSICS
    ]  # fmt: skip
    return out


TASKS: list[Task] = _tasks()

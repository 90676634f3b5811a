"""What verification is made of: failures, verdicts, checks, repair records and the policy."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from coreason_runtime._exceptions import RequestError

__all__ = [
    "DEFAULT_LADDER",
    "Check",
    "CheckResult",
    "Failure",
    "RepairRecord",
    "Verdict",
    "VerifyPolicy",
    "as_value",
    "normalise_pointer",
]

#: The temperatures of successive span candidates: the first is nearly greedy (the original
#: span was greedy and wrong; T=0 would decode it again), later ones explore further.
DEFAULT_LADDER: tuple[float, ...] = (0.3, 0.6, 0.9, 1.2)


def normalise_pointer(pointer: str) -> str:
    """A JSON pointer (RFC 6901) from a pointer or a bare top-level field name.

    ``"derivative"`` and ``"/derivative"`` both name the top-level field; ``""`` is the whole
    value.
    """
    if not isinstance(pointer, str):
        msg = f"a field is named by a JSON pointer string, got {type(pointer).__name__}"
        raise TypeError(msg)
    if pointer == "" or pointer.startswith("/"):
        return pointer
    return "/" + pointer.replace("~", "~0").replace("/", "~1")


@dataclass(frozen=True)
class Failure:
    """One finding of a verifier: the field it rejects (a JSON pointer; ``""`` is the whole
    value) and why. ``expected`` is what the verifier computed, when it did; ``method`` how it
    decided (``"sympy"``: exact, ``"numeric"``: spot checks at random points, ``"pint"``,
    ``"callable"``)."""

    pointer: str
    message: str
    verifier: str = ""
    expected: str | None = None
    method: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pointer", normalise_pointer(self.pointer))

    @property
    def field(self) -> str:
        """The pointer without its leading slash (``"derivative"``), or ``"<value>"``."""
        return self.pointer[1:] if self.pointer else "<value>"

    def describe(self) -> str:
        """``"/derivative: expected 3*x**2 (derivative, sympy)"``-style text, for people."""
        how = ", ".join(x for x in (self.verifier, self.method) if x)
        return f"{self.pointer or '<value>'}: {self.message}" + (f" ({how})" if how else "")


@dataclass(frozen=True)
class CheckResult:
    """What one check found, and how it decided (``method``), pass or fail."""

    failures: tuple[Failure, ...] = ()
    method: str | None = None


class Check(ABC):
    """A verifier with a name: what every verifier of a request is normalised to.

    A built-in (``coreason_runtime.verifiers``) knows the fields it reads and the one it
    judges, and can often compute the right value itself (:meth:`produce`, which a tool tier
    uses); a plain callable is wrapped so it reads every field and computes nothing.
    """

    name: str = "check"

    @property
    def reads(self) -> frozenset[str] | None:
        """JSON pointers of the fields this check reads (``None``: any of them)."""
        return None

    @property
    def expression_fields(self) -> frozenset[str]:
        """Fields that must hold a plain mathematical expression (tightens a repair's grammar)."""
        return frozenset()

    @abstractmethod
    def check(self, value: Any) -> CheckResult:
        """Judge ``value``; raising ``ValueError`` fails the whole value."""

    def produce(self, value: Any, pointer: str) -> Any:
        """The right JSON value of field ``pointer`` given the rest of ``value``, or ``None``
        when this check cannot compute it (the default)."""
        return None

    def __call__(self, value: Any) -> list[Failure]:
        return list(self.check(value).failures)


class RepairRecord(BaseModel):
    """One repair of one field: which field, which tier fixed it (or tried), at what cost.

    ``tier`` is ``"local"`` for a span re-decoded in the decode session, ``"cas"`` for a tool
    tier, ``"oracle"`` for a field question to a remote tier. ``tokens_in`` counts the tokens
    re-prefilled (the unchanged suffix) or prompt tokens, ``tokens_out`` the tokens decoded
    over every candidate; ``cost`` is C (for a tool tier: its CPU time, priced).
    """

    model_config = ConfigDict(frozen=True)

    field: str
    tier: str
    accepted: bool
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    candidates: int = 0
    old: str = ""
    new: str = ""
    reason: str = ""
    seconds: float = 0.0


@dataclass
class Verdict:
    """The outcome of every check on one value: failures, and how each check decided."""

    failures: list[Failure] = field(default_factory=list)
    methods: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fields(self) -> list[str]:
        """The failing pointers, each once, in the order found."""
        return list(dict.fromkeys(f.pointer for f in self.failures))

    def describe(self) -> str:
        return "; ".join(f.describe() for f in self.failures) or "verified"


@dataclass(frozen=True)
class VerifyPolicy:
    """How a request is verified and repaired (``generate(..., verify=...)``).

    Parameters
    ----------
    checks:
        The verifiers, each a :class:`Check` (plain callables are wrapped by :meth:`of`).
    candidates:
        K: span candidates decoded in the session per failing field before escalating it.
    temperatures:
        The temperature of each candidate, in order (the last repeats).
    repair:
        ``False`` turns span repair off: a rejected value is retried whole (the correction
        loop feeds the failures back), then escalated.
    span_tiers:
        Tiers asked for a failing field after the local candidates, in order (``"cas"``, a
        remote tier's name); ``None`` asks every one configured, ``()`` none.
    timeout:
        Seconds each verifier may take on one value.
    repair_tokens:
        Output tokens reserved per attempt for span re-decodes, beyond ``max_tokens``.
    """

    checks: tuple[Check, ...]
    candidates: int = 4
    temperatures: tuple[float, ...] = DEFAULT_LADDER
    repair: bool = True
    span_tiers: tuple[str, ...] | None = None
    timeout: float = 10.0
    repair_tokens: int = 128

    def __post_init__(self) -> None:
        if self.candidates < 1:
            msg = f"candidates must be >= 1, got {self.candidates}"
            raise RequestError(msg)
        if not self.temperatures or any(t <= 0 for t in self.temperatures):
            msg = f"temperatures must be positive, got {self.temperatures}"
            raise RequestError(msg)
        if not self.timeout > 0:
            msg = f"a verifier timeout must be positive, got {self.timeout}"
            raise RequestError(msg)
        if self.repair_tokens < 0:
            msg = f"repair_tokens must be >= 0, got {self.repair_tokens}"
            raise RequestError(msg)

    @classmethod
    def of(cls, verify: Any, **options: Any) -> VerifyPolicy:
        """A policy from what a caller passed as ``verify=``: a policy, one verifier (a
        :class:`Check` or any callable), or a list of them.

        Raises
        ------
        RequestError
            Something that is not a verifier.
        """
        if isinstance(verify, VerifyPolicy):
            return verify
        items: Iterable[Any] = (
            verify if isinstance(verify, (list, tuple)) and not callable(verify) else [verify]
        )
        checks = tuple(_as_check(v) for v in items)
        if not checks:
            msg = "verify= names no verifier"
            raise RequestError(msg)
        return cls(checks=checks, **options)

    def temperature(self, index: int) -> float:
        """The temperature of candidate ``index`` (0-based)."""
        return self.temperatures[min(index, len(self.temperatures) - 1)]

    def with_options(self, **options: Any) -> VerifyPolicy:
        """A copy with some settings changed."""
        from dataclasses import replace

        return replace(self, **options)


def _as_check(obj: Any) -> Check:
    from coreason_runtime.verify._run import CallableCheck

    if isinstance(obj, Check):
        return obj
    if callable(obj):
        return CallableCheck(obj)
    msg = f"a verifier must be callable (value -> failures), got {type(obj).__name__}"
    raise RequestError(msg)


def as_value(value: Any) -> Any:
    """The JSON form of a validated value (a pydantic instance becomes a dict)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value

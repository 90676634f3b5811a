"""Lazy steps (thunks), invariants, and running a DAG of steps in dependency order."""

from __future__ import annotations

import ast
import html
import linecache
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from coreason_runtime import Controls, EventBus, EventType, SimulationError

__all__ = [
    "CellInvariant",
    "CellInvariantResult",
    "CellInvariantViolation",
    "CellThunk",
    "RunReport",
    "dependency_order",
    "evaluate_body",
]

_UNSET: Any = object()


class CellInvariantViolation(SimulationError):
    """One or more declared invariants do not hold; ``results`` says which and why."""

    def __init__(self, message: str, *, results: list[CellInvariantResult], **fields: Any) -> None:
        super().__init__(message, **fields)
        self.results = results


def evaluate_body(code: str, ns: dict[str, Any], filename: str) -> Any:
    """Execute ``code`` in ``ns``; the value of a final expression is returned (as in a cell)."""
    # the body's own lines appear in its traceback, as a cell's do
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
    tree = ast.parse(code, filename=filename, mode="exec")
    last: ast.expr | None = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body.pop().value  # type: ignore[attr-defined]
    exec(compile(tree, filename, "exec"), ns)
    if last is None:
        return None
    return eval(compile(ast.Expression(last), filename, "eval"), ns)


def _summary(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class CellThunk:
    """A declared lazy step: its body runs once, on first :meth:`force` (or ``.value``).

    The body sees the user namespace, with each dependency's *value* bound under its name, so
    ``%%coreason thunk area --after side`` can say ``side ** 2``. Forcing a thunk forces its
    dependencies first. Declaring publishes ``step.declared``; forcing ``step.forced``.
    """

    def __init__(
        self,
        name: str,
        code: str,
        *,
        deps: Iterable[str] = (),
        namespace: Mapping[str, Any],
        bus: EventBus,
        workflow_id: str | None = None,
        resolve: Callable[[str], CellThunk | None] | None = None,
        controls: Controls | None = None,
    ) -> None:
        self.name = name
        self.code = code
        self._after = list(deps)
        self.workflow_id = workflow_id
        self._ns = namespace
        self._bus = bus
        self._resolve = resolve or (lambda n: None)
        self._controls = controls
        self._lock = threading.RLock()
        self._value: Any = _UNSET
        self.error: BaseException | None = None
        self.duration_s: float | None = None
        tree = ast.parse(code, filename=f"<thunk {name}>")  # syntax errors surface here
        self._names = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - {name})
        bus.emit(
            EventType.STEP_DECLARED,
            workflow_id=workflow_id,
            source="coreason_lab",
            name=name,
            deps=self.deps,
        )

    @property
    def deps(self) -> list[str]:
        """``--after`` names, then every declared step the body mentions (resolved now, so a
        step declared after this one is still found)."""
        found = [n for n in self._names if n not in self._after and self._resolve(n) is not None]
        return [*self._after, *found]

    @property
    def forced(self) -> bool:
        return self._value is not _UNSET

    def force(self) -> Any:
        """The step's value, computing it (and its dependencies) on first call."""
        with self._lock:
            if self._value is not _UNSET:
                return self._value
            values = {}
            for dep in self.deps:
                other = self._resolve(dep)
                values[dep] = other.force() if other is not None else self._ns[dep]
            if self._controls is not None and self.workflow_id is not None:
                with self._controls.scope(self.workflow_id) as ticket:
                    ticket.checkpoint()  # a paused workflow holds the step here
            ns = dict(self._ns)
            ns.update(values)
            started = time.perf_counter()
            try:
                value = evaluate_body(self.code, ns, f"<thunk {self.name}>")
            except BaseException as e:
                self.error = e
                raise
            if value is None and self.name in ns and ns[self.name] is not self:
                value = ns[self.name]
            self.duration_s = time.perf_counter() - started
            self._value = value
            self.error = None
        self._bus.emit(
            EventType.STEP_FORCED,
            workflow_id=self.workflow_id,
            source="coreason_lab",
            name=self.name,
            summary=_summary(value),
            duration_s=self.duration_s,
        )
        return value

    @property
    def value(self) -> Any:
        return self.force()

    def reset(self) -> None:
        """Forget the value; the next :meth:`force` recomputes it."""
        with self._lock:
            self._value = _UNSET

    def __repr__(self) -> str:  # cheap: never forces
        state = f"= {_summary(self._value)}" if self.forced else "(not forced)"
        deps = f" after {', '.join(self.deps)}" if self.deps else ""
        return f"<CellThunk {self.name}{deps} {state}>"


@dataclass
class CellInvariantResult:
    name: str
    ok: bool | None
    detail: str = ""


@dataclass
class CellInvariant:
    """A constraint: boolean expressions (one per line) and/or a pint unit for a value.

    ``check(ns)`` evaluates it against a namespace in which thunks stand for their values;
    an unforced thunk makes the result ``None`` (not yet decidable) rather than forcing it.
    """

    name: str
    expressions: list[str] = field(default_factory=list)
    unit: str | None = None
    of: str | None = None

    def check(self, ns: Mapping[str, Any]) -> CellInvariantResult:
        env = {}
        for key, value in ns.items():
            if isinstance(value, CellThunk):
                if not value.forced:
                    if self._mentions(key):
                        return CellInvariantResult(self.name, None, f"{key} is not forced yet")
                    continue
                value = value.force()
            env[key] = value
        try:
            for expr in self.expressions:
                if not eval(compile(expr, f"<invariant {self.name}>", "eval"), env):
                    return CellInvariantResult(self.name, False, f"{expr} is false")
            if self.unit is not None:
                return self._check_unit(env)
        except NameError as e:  # a typo in the invariant, not a violation: say so
            e.add_note(f"in invariant {self.name!r}: {self.expressions or [self.of]}")
            raise
        except Exception as e:
            return CellInvariantResult(self.name, False, f"{type(e).__name__}: {e}")
        return CellInvariantResult(self.name, True, "holds")

    def _mentions(self, key: str) -> bool:
        texts = [*self.expressions, self.of or (self.name if self.unit else "")]
        return any(
            key in {n.id for n in ast.walk(ast.parse(t, mode="eval")) if isinstance(n, ast.Name)}
            for t in texts
            if t
        )

    def _check_unit(self, env: dict[str, Any]) -> CellInvariantResult:
        import pint

        ureg = pint.get_application_registry()
        target = self.of or self.name
        value = eval(compile(target, f"<invariant {self.name}>", "eval"), env)
        if not isinstance(value, pint.Quantity):
            return CellInvariantResult(
                self.name,
                False,
                f"{target} has no unit (expected {self.unit}); use pint.get_application_registry()",
            )
        if not value.is_compatible_with(ureg(self.unit)):
            return CellInvariantResult(
                self.name, False, f"{target} is in {value.units}, not compatible with {self.unit}"
            )
        return CellInvariantResult(self.name, True, f"{target} is in {value.units}")

    def predicate(self) -> Callable[[Mapping[str, Any]], bool]:
        """A plain callable for verifiers and simulations: ``ns -> bool``."""
        return lambda ns: self.check(ns).ok is True


def dependency_order(targets: Iterable[str], deps: Mapping[str, list[str]]) -> list[str]:
    """Every target and its transitive dependencies, dependencies first.

    ``deps`` maps each declared step to the names it needs; names that are not declared steps
    (plain variables) are not ordered. The order is the scheduler's: the steps become a
    :class:`~coreason_runtime.sched.SubgoalDAG`, which checks the graph and sorts it.

    Raises
    ------
    ValueError
        On a cycle (the message names it) or a target that is not declared.
    """
    from coreason_runtime import DAGCycleError
    from coreason_runtime.sched import SubgoalDAG, TaskSpec

    needed = list(dict.fromkeys(targets))
    for name in needed:
        if name not in deps:
            msg = f"run depends on {name!r}, which is not declared"
            raise ValueError(msg)
    seen = set(needed)
    for name in needed:  # grows while it is read: the closure, in discovery order
        for dep in deps[name]:
            if dep in deps and dep not in seen:
                seen.add(dep)
                needed.append(dep)
    tasks = [TaskSpec(id=n, deps=[d for d in deps[n] if d in deps]) for n in needed]
    try:
        dag = SubgoalDAG(id="steps", tasks=tasks)
    except DAGCycleError as e:
        msg = f"the steps form a cycle: {' -> '.join(e.cycle)}"
        raise ValueError(msg) from e
    return dag.topological_order()


@dataclass
class RunReport:
    """What ``%coreason run`` did: per step its state and duration, and the critical path."""

    workflow_id: str
    states: dict[str, str] = field(default_factory=dict)
    status: str = "succeeded"
    durations: dict[str, float] = field(default_factory=dict)
    critical_path: list[str] = field(default_factory=list)
    invariants: list[CellInvariantResult] = field(default_factory=list)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{'★ ' if n in self.critical_path else ''}{html.escape(n)}</td>"
            f"<td>{html.escape(s)}</td><td>{self.durations.get(n, 0.0):.3f}</td></tr>"
            for n, s in self.states.items()
        )
        inv = "".join(
            f"<li>{html.escape(r.name)}: {html.escape(r.detail)}</li>" for r in self.invariants
        )
        return (
            f"<div class='coreason-run'><b>run</b> {html.escape(self.workflow_id)} · "
            f"critical path: {html.escape(' → '.join(self.critical_path))}"
            "<table><tr><th>step</th><th>state</th><th>s</th></tr>"
            f"{rows}</table>{f'<ul>{inv}</ul>' if inv else ''}</div>"
        )

"""Every place the source emits an event, found with ``ast``, and checked against its payload.

A site is a call ``<…bus>.emit(T, ...)`` where ``T`` names its event type: ``EventType.X``,
``EventType.A if c else EventType.B``, or ``TABLE[key]`` for a module-level dict whose values
are all ``EventType.X``. Or it is a call of an emit helper: a function that passes one of its
own parameters as the type to ``.emit`` (``_emit(self, type_, **data)``,
``DecodeSession.emit``, ``Controls._set``). A helper's own keywords (``session=``,
``dag_id=``) count as fields of every call through it; the caller's keywords count when the
helper forwards ``**kwargs``. A helper call is matched to the helper of that name in the same
module, else to the only one of that name in the same package (``session._emit`` from
``decode/_repair.py``). A bus emit whose type cannot be read is reported, never skipped.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from coreason_runtime import EventType
from coreason_runtime.events import PAYLOADS

BUS_KEYWORDS = frozenset({"workflow_id", "source"})


@dataclass(frozen=True)
class Helper:
    implicit: frozenset[str]  # fields the helper adds itself
    forwards: bool  # it passes the caller's keywords on (``**data``)


@dataclass(frozen=True)
class Site:
    where: str
    types: tuple[str, ...]  # EventType member names
    fields: frozenset[str]
    open: bool  # passes ``**kwargs`` on: fields beyond those named may arrive


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return call.func.id if isinstance(call.func, ast.Name) else None


def _on_a_bus(call: ast.Call) -> bool:
    """``bus.emit(…)``, ``self._bus.emit(…)``, ``rt.bus.emit(…)``: the bus itself."""
    if not (isinstance(call.func, ast.Attribute) and call.func.attr == "emit"):
        return False
    owner = call.func.value
    name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
    return str(name).endswith("bus")


def _literal(node: ast.expr) -> str | None:
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "EventType"
    ):
        return node.attr
    return None


def _tables(tree: ast.Module) -> dict[str, tuple[str, ...]]:
    """Module-level dicts whose values are all ``EventType.X``."""
    out = {}
    for stmt in tree.body:
        target = stmt.target if isinstance(stmt, ast.AnnAssign) else None
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
        value = stmt.value if isinstance(stmt, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(target, ast.Name) and isinstance(value, ast.Dict) and value.values:
            names = [_literal(v) for v in value.values]
            if all(names):
                out[target.id] = tuple(n for n in names if n)
    return out


def _event_types(node: ast.expr, tables: Mapping[str, tuple[str, ...]]) -> tuple[str, ...] | None:
    name = _literal(node)
    if name is not None:
        return (name,)
    if isinstance(node, ast.IfExp):
        body, orelse = _event_types(node.body, tables), _event_types(node.orelse, tables)
        return body + orelse if body and orelse else None
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        return tables.get(node.value.id)
    return None


def _params(func: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    a = func.args
    return {p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)}


def _forwarded_type(call: ast.Call, params: set[str]) -> bool:
    return (
        _callee(call) == "emit"
        and bool(call.args)
        and isinstance(call.args[0], ast.Name)
        and call.args[0].id in params
    )


def _helpers(trees: Mapping[Path, ast.Module]) -> dict[Path, dict[str, Helper]]:
    found: dict[Path, dict[str, Helper]] = {}
    for path, tree in trees.items():
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            params = _params(func)
            for call in ast.walk(func):
                if isinstance(call, ast.Call) and _forwarded_type(call, params):
                    kws = call.keywords
                    named = {k.arg for k in kws if k.arg} - BUS_KEYWORDS
                    found.setdefault(path, {})[func.name] = Helper(
                        implicit=frozenset(named), forwards=any(k.arg is None for k in kws)
                    )
    return found


def _resolve(helpers: Mapping[Path, Mapping[str, Helper]], path: Path, name: str) -> Helper | None:
    if name in helpers.get(path, {}):
        return helpers[path][name]
    near = [h[name] for p, h in helpers.items() if p.parent == path.parent and name in h]
    return near[0] if len(near) == 1 else None


def _enclosing_params(tree: ast.Module) -> dict[ast.Call, set[str]]:
    """For each call, the parameters of the function it is in (helpers forward those)."""
    out: dict[ast.Call, set[str]] = {}
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            params = _params(func)
            for call in ast.walk(func):
                if isinstance(call, ast.Call):
                    out[call] = params
    return out


def collect(sources: Mapping[Path, str]) -> tuple[list[Site], list[str]]:
    """Every emit site in ``sources``, and the emits whose fields cannot be checked (a bus
    emit of a computed type, a helper call matched to no helper)."""
    trees = {path: ast.parse(text, filename=str(path)) for path, text in sources.items()}
    helpers = _helpers(trees)
    sites: list[Site] = []
    unmatched: list[str] = []
    for path, tree in trees.items():
        tables, params = _tables(tree), _enclosing_params(tree)
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call) or _forwarded_type(call, params.get(call, set())):
                continue  # not a call, or a helper's own emit: checked at the helper's callers
            where = f"{path}:{call.lineno}"
            name = _callee(call) or ""
            types = next(filter(None, (_event_types(a, tables) for a in call.args)), None)
            if types is None:
                if _on_a_bus(call):
                    unmatched.append(f"{where}: a bus emit whose event type cannot be read")
                continue
            named = frozenset(k.arg for k in call.keywords if k.arg) - BUS_KEYWORDS
            spread = any(k.arg is None for k in call.keywords)
            if _on_a_bus(call):
                sites.append(Site(where, types, named, spread))
                continue
            helper = _resolve(helpers, path, name)
            if helper is None:
                if "emit" in name:
                    unmatched.append(f"{where}: {name}(EventType.{types[0]}, …) has no helper")
                continue
            fields = helper.implicit | (named if helper.forwards else frozenset())
            sites.append(Site(where, types, fields, spread and helper.forwards))
    return sites, unmatched


def problems(sites: list[Site]) -> list[str]:
    """Unknown fields, and required fields missing (unless the site passes ``**kwargs``)."""
    out = []
    for site in sites:
        for type_name in dict.fromkeys(site.types):
            cls = PAYLOADS[EventType[type_name]]
            unknown = sorted(site.fields - set(cls.model_fields))
            required = {n for n, f in cls.model_fields.items() if f.is_required()}
            missing = [] if site.open else sorted(required - site.fields)
            if unknown or missing:
                out.append(
                    f"{site.where}: EventType.{type_name} ({cls.__name__}) "
                    f"unknown {unknown} missing {missing}"
                )
    return out

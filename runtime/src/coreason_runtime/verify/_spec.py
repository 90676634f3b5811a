"""Verifiers written as text: ``--verify 'derivative(of=x**3, result=derivative)'``.

The command line (``coreason ask --verify``) and the notebook (``%%coreason ask --verify``)
name verifiers in one short language: calls of the built-ins in
:mod:`coreason_runtime.verifiers`, separated by commas, whose arguments are read as text —
``of=x**3`` and ``of="x**3"`` are the same, so quotes a shell or a magic strips do not
matter. Literal numbers and lists (a matrix) stay what they are. In a notebook a name (or a
call) of a callable from the user's namespace is a verifier too.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from typing import Any

from coreason_runtime._exceptions import RequestError

__all__ = ["BUILTINS", "parse_verify"]


def _builtins() -> dict[str, Callable[..., Any]]:
    from coreason_runtime import verifiers as V

    return {
        "derivative": V.derivative,
        "antiderivative": V.antiderivative,
        "equivalent": V.equivalent,
        "roots": V.roots,
        "eigenvalues": V.eigenvalues,
        "limit": V.limit,
        "units": V.units,
        "invariant": V.invariant,
    }


BUILTINS = ("antiderivative", "derivative", "eigenvalues", "equivalent", "invariant", "limit",
            "roots", "units")  # fmt: skip


def _argument(node: ast.expr, text: str) -> Any:
    """A literal stays a value (numbers, strings, lists); anything else is its own text."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        segment = ast.get_source_segment(text, node)
        return segment if segment is not None else ast.unparse(node)


def _one(node: ast.expr, text: str, namespace: Mapping[str, Any] | None) -> Any:
    builtins = _builtins()
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name = node.func.id
        if name in builtins:
            args = [_argument(a, text) for a in node.args]
            kwargs = {k.arg: _argument(k.value, text) for k in node.keywords if k.arg}
            try:
                return builtins[name](*args, **kwargs)
            except TypeError as e:
                msg = f"--verify {name}(...): {e}"
                raise RequestError(msg) from e
    if namespace is not None:
        source = ast.get_source_segment(text, node) or ast.unparse(node)
        try:  # the user's own expression over their own namespace, in their own kernel
            value = eval(source, {"__builtins__": {}}, dict(namespace))
        except Exception as e:
            msg = f"--verify: cannot evaluate {source!r}: {type(e).__name__}: {e}"
            raise RequestError(msg) from e
        if callable(value):
            return value
    known = ", ".join(BUILTINS)
    where = "" if namespace is None else " or a callable in the namespace"
    msg = (
        f"--verify: {ast.unparse(node)!r} is not a verifier; use one of {known}{where}, "
        "e.g. derivative(of=x**3, result=derivative)"
    )
    raise RequestError(msg)


def parse_verify(text: str, namespace: Mapping[str, Any] | None = None) -> list[Any]:
    """The verifiers named by ``text`` (comma-separated calls of the built-ins; in a notebook,
    also callables of ``namespace``).

    Raises
    ------
    RequestError
        ``text`` does not parse, or names something that is not a verifier.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        msg = f"--verify {text!r} does not parse: {e.msg}"
        raise RequestError(msg) from e
    body = tree.body
    nodes = list(body.elts) if isinstance(body, ast.Tuple) else [body]
    if not nodes:
        msg = "--verify names no verifier"
        raise RequestError(msg)
    return [_one(n, text.strip(), namespace) for n in nodes]

"""Tools whose heavy run is a child process: a cheap check now, the expensive command later."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from coreason_runtime._exceptions import PreconditionError

__all__ = ["CommandTool", "Tool", "python_tool"]

Inputs = Mapping[str, Any]


class Tool(Protocol):
    """A heavy tool: ``check`` is cheap and runs at prepare; ``command`` is the heavy run."""

    name: str

    def check(self, inputs: Inputs, est_cost: float) -> None:
        """Raise :class:`PreconditionError` if the call must not go ahead."""
        ...

    def command(self, inputs: Inputs) -> Sequence[str]:
        """The argv of the heavy run (a child process in its own process group)."""
        ...

    def parse(self, stdout: bytes) -> Any:
        """The result, from what the heavy run printed."""
        ...


class CommandTool:
    """A tool whose heavy run is ``command(inputs)``, an argv.

    Parameters
    ----------
    name:
        Unique within a :class:`ToolTransactions`.
    command:
        Builds the argv from the inputs.
    check:
        Cheap precondition check; raise ``ValueError``/``PreconditionError`` to refuse.
    parse:
        Turns stdout into the result (default: decoded text).
    max_cost:
        Upper bound on ``est_cost``; prepare refuses anything above it.
    """

    def __init__(
        self,
        name: str,
        command: Callable[[Inputs], Sequence[str]],
        *,
        check: Callable[[Inputs], Any] | None = None,
        parse: Callable[[bytes], Any] | None = None,
        max_cost: float | None = None,
    ) -> None:
        self.name = name
        self._command = command
        self._check = check
        self._parse = parse
        self.max_cost = max_cost

    def check(self, inputs: Inputs, est_cost: float) -> None:
        if not math.isfinite(est_cost) or est_cost < 0:
            msg = f"{self.name}: est_cost must be a finite non-negative number, got {est_cost!r}"
            raise PreconditionError(msg)
        if self.max_cost is not None and est_cost > self.max_cost:
            msg = f"{self.name}: est_cost {est_cost} exceeds the bound {self.max_cost}"
            raise PreconditionError(msg)
        if self._check is not None:
            try:
                self._check(inputs)
            except PreconditionError:
                raise
            except (ValueError, TypeError, KeyError) as e:
                msg = f"{self.name}: precondition failed: {e}"
                raise PreconditionError(msg) from e
        try:
            argv = list(self._command(inputs))
        except (ValueError, TypeError, KeyError) as e:
            msg = f"{self.name}: cannot build the command from the inputs: {e}"
            raise PreconditionError(msg) from e
        if not argv or not all(isinstance(a, str) for a in argv):
            msg = f"{self.name}: the command must be a non-empty list of strings, got {argv!r}"
            raise PreconditionError(msg)

    def command(self, inputs: Inputs) -> Sequence[str]:
        return list(self._command(inputs))

    def parse(self, stdout: bytes) -> Any:
        if self._parse is None:
            return stdout.decode(errors="replace")
        return self._parse(stdout)


def python_tool(name: str, code: str, **kwargs: Any) -> CommandTool:
    """A tool running ``code`` in a fresh interpreter with ``inputs`` bound as a dict.

    The code sets ``result``; it is printed as JSON and parsed back. Example::

        python_tool("sines", "import math; result = sum(map(math.sin, range(inputs['n'])))")
    """
    script = (
        f"import json, sys\ninputs = json.loads(sys.argv[1])\n{code}\nprint(json.dumps(result))\n"
    )
    return CommandTool(
        name,
        lambda inputs: [sys.executable, "-c", script, json.dumps(inputs)],
        parse=json.loads,
        **kwargs,
    )

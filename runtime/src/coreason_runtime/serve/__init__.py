"""``coreason serve``: an OpenAI-compatible HTTP server over the local tier."""

from __future__ import annotations

from typing import Any

from coreason_runtime._exceptions import MissingExtraError
from coreason_runtime.serve._cli import cmd_serve


def __getattr__(name: str) -> Any:
    # The app needs the serve extra (fastapi): import it on first use, so that the command
    # line can be built (and say which extra is missing) without it.
    if name == "create_app":
        try:
            from coreason_runtime.serve._app import create_app
        except ImportError as e:
            raise MissingExtraError(e.name or "fastapi", "serve") from e
        return create_app
    raise AttributeError(name)


__all__ = ["cmd_serve", "create_app"]

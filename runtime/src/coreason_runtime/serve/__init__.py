"""``coreason serve``: an OpenAI-compatible HTTP server over the local tier."""

from __future__ import annotations

from coreason_runtime.serve._app import create_app
from coreason_runtime.serve._cli import cmd_serve

__all__ = ["cmd_serve", "create_app"]

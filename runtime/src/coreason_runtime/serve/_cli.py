"""``coreason serve``: load the local model in the background and serve it over HTTP."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from coreason_runtime._config import DEFAULT_MODEL, RuntimeConfig
from coreason_runtime._exceptions import ConfigurationError, MissingExtraError

__all__ = ["add_arguments", "build_parser", "cmd_serve", "local_tier_loader", "main"]

logger = logging.getLogger("coreason_runtime.serve")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``coreason serve`` (host, port, model, token, batch)."""
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default 127.0.0.1: this machine only)",
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--model",
        default=None,
        help="model name, folder or .gguf (default $COREASON_MODEL or SmolLM2)",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="require `Authorization: Bearer TOKEN` (or $COREASON_SERVE_TOKEN)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=8,
        help="requests decoded at once, batched on the model (default 8; 1: one at a time)",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(
        argparse.ArgumentParser(
            prog="coreason serve", description="OpenAI-compatible server over the local tier"
        )
    )


def local_tier_loader(model: str | None) -> Any:
    """A zero-argument function that loads ``model`` and returns its ``LocalTier``."""

    def load() -> Any:
        from coreason_runtime.models import load_model
        from coreason_runtime.tensor._compiler import UniversalCompiler
        from coreason_runtime.tensor._local import LocalTier

        cfg = RuntimeConfig(oracle=None)
        loaded = load_model(model)
        compiler = UniversalCompiler(loaded, timeout=cfg.compile_timeout)
        # One token per streamed chunk, as OpenAI streams do.
        return LocalTier(loaded, compiler, stream_every=1, timeout=cfg.local_timeout)

    return load


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve ``args.model`` on ``args.host:args.port`` until interrupted.

    ``args`` carries ``host``, ``port``, ``model``, ``token`` (``None`` reads
    ``$COREASON_SERVE_TOKEN``) and ``batch`` (requests decoded at once). The model loads in
    the background; ``/health`` answers ``"loading"`` until it is ready.
    """
    try:
        import uvicorn

        from coreason_runtime.serve._app import create_app
    except ImportError as e:
        raise MissingExtraError(e.name or "fastapi", "serve") from e
    host = getattr(args, "host", None) or "127.0.0.1"
    port = int(getattr(args, "port", 8000))
    if not 0 <= port <= 65535:
        msg = f"port must be between 0 and 65535, got {port}"
        raise ConfigurationError(msg)
    model = getattr(args, "model", None)
    token = getattr(args, "token", None) or os.environ.get("COREASON_SERVE_TOKEN") or None
    if not _is_loopback(host) and token is None:
        print(
            f"warning: serving on {host} without --token: anyone who can reach it can use "
            "the model",
            file=sys.stderr,
        )
    name = model or os.environ.get("COREASON_MODEL") or DEFAULT_MODEL
    batch = int(getattr(args, "batch", 8))
    if batch < 1:
        msg = f"--batch must be at least 1, got {batch}"
        raise ConfigurationError(msg)
    app = create_app(local_tier_loader(model), token=token, model_name=name, batch=batch)
    print(
        f"coreason serve: {name} on http://{host}:{port}/v1 (model loading; GET /health)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m coreason_runtime.serve``: the same options as ``coreason serve``."""
    return cmd_serve(build_parser().parse_args(argv))

"""``coreason serve``: load the local model in the background and serve it over HTTP."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coreason_runtime._config import DEFAULT_MODEL, RuntimeConfig
from coreason_runtime._exceptions import ConfigurationError, MissingExtraError
from coreason_runtime.serve._limits import ServeLimits

__all__ = [
    "add_arguments",
    "build_parser",
    "cmd_serve",
    "local_tier_loader",
    "main",
    "read_limits",
    "read_token",
]

logger = logging.getLogger("coreason_runtime.serve")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``coreason serve`` (host, port, model, token file, limits, stream
    interval, batch)."""
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
        "--token-file",
        default=None,
        metavar="PATH",
        help="require `Authorization: Bearer TOKEN`, TOKEN read from PATH (or set "
        "$COREASON_SERVE_TOKEN); never on the command line, where `ps` shows it",
    )
    # Refused with a message, not unknown: a token in argv is visible to every local user.
    parser.add_argument("--token", default=None, help=argparse.SUPPRESS)
    limits = ServeLimits()
    parser.add_argument(
        "--max-body",
        type=int,
        default=limits.max_body_bytes,
        metavar="BYTES",
        help=f"largest request body (default {limits.max_body_bytes})",
    )
    parser.add_argument(
        "--queue",
        type=int,
        default=limits.max_queue,
        metavar="N",
        help=f"requests queued or running before 429 (default {limits.max_queue})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=limits.request_timeout,
        metavar="SECONDS",
        help="deadline of a request from arrival, queueing and prefill included "
        f"(default {limits.request_timeout:g})",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=4096,
        metavar="N",
        help="the most output tokens a request may ask for (default 4096)",
    )
    parser.add_argument(
        "--stream-interval",
        type=int,
        default=1,
        help="tokens per streamed chunk (default 1, as OpenAI streams)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=8,
        help="requests decoded at once, batched on the model (default 8; 1: one at a time)",
    )
    return parser


def read_token(args: argparse.Namespace) -> str | None:
    """The bearer token: from ``--token-file``, else ``$COREASON_SERVE_TOKEN``, else none.

    Raises
    ------
    ConfigurationError
        ``--token`` was given (argv is world-readable), or the token file is unreadable/empty.
    """
    if getattr(args, "token", None):
        msg = (
            "--token would show the token to every user of this machine (ps); put it in a "
            "file and pass --token-file PATH, or set COREASON_SERVE_TOKEN"
        )
        raise ConfigurationError(msg)
    path = getattr(args, "token_file", None)
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            msg = f"cannot read the token file {path}: {type(e).__name__}"
            raise ConfigurationError(msg) from None
        if not token:
            msg = f"the token file {path} is empty"
            raise ConfigurationError(msg)
        return token
    return os.environ.get("COREASON_SERVE_TOKEN") or None


def read_limits(args: argparse.Namespace) -> ServeLimits:
    """The limits the options ask for (defaults for any not given)."""
    base = ServeLimits()
    limits = ServeLimits(
        max_body_bytes=int(getattr(args, "max_body", base.max_body_bytes)),
        max_schema_bytes=base.max_schema_bytes,
        max_queue=int(getattr(args, "queue", base.max_queue)),
        request_timeout=float(getattr(args, "timeout", base.request_timeout)),
    )
    if limits.max_body_bytes < 1024 or limits.max_queue < 1 or limits.request_timeout <= 0:
        msg = "--max-body must be at least 1024, --queue at least 1, --timeout above 0"
        raise ConfigurationError(msg)
    return limits


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(
        argparse.ArgumentParser(
            prog="coreason serve", description="OpenAI-compatible server over the local tier"
        )
    )


def local_tier_loader(model: str | None, stream_interval: int = 1) -> Any:
    """A zero-argument function that loads ``model`` and returns its ``LocalTier``, streaming
    ``stream_interval`` tokens per chunk."""

    def load() -> Any:
        from coreason_runtime.models import load_model
        from coreason_runtime.tensor._compiler import UniversalCompiler
        from coreason_runtime.tensor._local import LocalTier

        cfg = RuntimeConfig(oracle=None)
        loaded = load_model(model)
        compiler = UniversalCompiler(loaded, timeout=cfg.compile_timeout)
        every = max(1, stream_interval)
        return LocalTier(loaded, compiler, stream_every=every, timeout=cfg.local_timeout)

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

    ``args`` carries ``host``, ``port``, ``model``, ``token_file`` (else
    ``$COREASON_SERVE_TOKEN``), the limits, ``stream_interval`` (tokens per streamed
    chunk) and ``batch`` (requests decoded at once). The model loads in the background;
    ``/health`` answers ``"loading"`` until it is ready.
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
    token = read_token(args)
    limits = read_limits(args)
    if not _is_loopback(host) and token is None:
        print(
            f"warning: serving on {host} without a token (--token-file or "
            "$COREASON_SERVE_TOKEN): anyone who can reach it can use the model",
            file=sys.stderr,
        )
    name = model or os.environ.get("COREASON_MODEL") or DEFAULT_MODEL
    interval = int(getattr(args, "stream_interval", 1) or 1)
    if interval < 1:
        msg = f"--stream-interval must be at least 1, got {interval}"
        raise ConfigurationError(msg)
    batch = int(getattr(args, "batch", 8))
    if batch < 1:
        msg = f"--batch must be at least 1, got {batch}"
        raise ConfigurationError(msg)
    app = create_app(
        local_tier_loader(model, interval),
        token=token,
        model_name=name,
        limits=limits,
        max_tokens_ceiling=int(getattr(args, "max_tokens", 4096)),
        batch=batch,
    )
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

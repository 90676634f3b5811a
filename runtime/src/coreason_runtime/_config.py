"""Where the runtime keeps its state and how it finds its models and oracle."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from coreason_runtime._exceptions import ConfigurationError

__all__ = ["DEFAULT_MODEL", "OracleConfig", "RuntimeConfig", "coreason_home", "model_cache_dir"]

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def coreason_home() -> Path:
    """``$COREASON_HOME`` (default ``~/.coreason``), created on first use."""
    home = Path(os.environ.get("COREASON_HOME", "~/.coreason")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def _mib(var: str, default: int | None) -> int | None:
    """``$var`` in MiB as bytes (``none``: unbounded), else ``default``."""
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return default
    if raw.strip().lower() == "none":
        return None
    try:
        mib = float(raw)
    except ValueError:
        mib = -1.0
    if not mib >= 0:  # also NaN
        msg = f"${var} must be a size in MiB >= 0 or 'none', got {raw!r}"
        raise ConfigurationError(msg)
    return int(mib * 2**20)


def _path_env(var: str) -> Path | None:
    raw = os.environ.get(var, "").strip()
    return Path(raw).expanduser() if raw else None


def model_cache_dir() -> Path:
    """Where converted models live: ``$COREASON_MODEL_CACHE`` or ``$COREASON_HOME/models``."""
    explicit = os.environ.get("COREASON_MODEL_CACHE")
    path = Path(explicit).expanduser() if explicit else coreason_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class OracleConfig:
    """A remote OpenAI-compatible tier. The key is kept out of ``repr``."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0
    # counts streamed tokens when the server sends no usage per chunk (None: the local model's)
    tokenizer: str | None = None

    @classmethod
    def from_env(cls) -> OracleConfig | None:
        """Read ``COREASON_ORACLE_BASE_URL``/``_MODEL``/``_API_KEY``; ``None`` if unset."""
        base_url = os.environ.get("COREASON_ORACLE_BASE_URL")
        if not base_url:
            return None
        return cls(
            base_url=base_url,
            model=os.environ.get("COREASON_ORACLE_MODEL", "default"),
            api_key=os.environ.get("COREASON_ORACLE_API_KEY") or None,
            tokenizer=os.environ.get("COREASON_ORACLE_TOKENIZER") or None,
        )


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings for one :class:`~coreason_runtime.Coordinator`."""

    home: Path = field(default_factory=coreason_home)
    model: str = field(default_factory=lambda: os.environ.get("COREASON_MODEL", DEFAULT_MODEL))
    oracle: OracleConfig | None = field(default_factory=OracleConfig.from_env)
    budget_backend: str = field(
        default_factory=lambda: os.environ.get("COREASON_BUDGET_BACKEND", "sqlite")
    )
    redis_url: str | None = field(default_factory=lambda: os.environ.get("COREASON_REDIS_URL"))
    weight_in: float = 1.0
    weight_out: float = 3.0
    # budget leases: output tokens granted at a time (None: the worst case up front), and the
    # longest a request waits for leases in flight to give room back
    lease_tokens: int | None = 16
    lease_wait: float = 30.0
    compile_timeout: float = 5.0
    local_timeout: float = 120.0
    max_tokens: int = 256
    max_attempts_per_tier: int = 3
    # A request that finds its workflow paused waits this long for a resume (saying so), then
    # raises WorkflowPausedError; COREASON_PAUSE_TIMEOUT=inf waits without limit.
    pause_timeout: float = field(
        default_factory=lambda: float(os.environ.get("COREASON_PAUSE_TIMEOUT", "600"))
    )
    # The router answers a question it has answered and verified before from `rt.cache` (any
    # workflow, cost 0); COREASON_SUBGOAL_CACHE=0 makes every request go to the tiers.
    subgoal_cache: bool = field(
        default_factory=lambda: os.environ.get("COREASON_SUBGOAL_CACHE", "1") != "0"
    )
    # KV blocks in tiers (rt.kv): capacity per tier in bytes (None: unbounded; a disk tier of
    # 0 turns it off), from COREASON_KV_{GPU,RAM,DISK}_MB; tokens per block
    kv_gpu_bytes: int | None = field(default_factory=lambda: _mib("COREASON_KV_GPU_MB", 2 << 30))
    kv_ram_bytes: int | None = field(default_factory=lambda: _mib("COREASON_KV_RAM_MB", 1 << 30))
    kv_disk_bytes: int | None = field(default_factory=lambda: _mib("COREASON_KV_DISK_MB", 8 << 30))
    kv_block_tokens: int = field(
        default_factory=lambda: int(os.environ.get("COREASON_KV_BLOCK_TOKENS", "64"))
    )
    # The KV disk tier's folder: $COREASON_KV_DIR, else $COREASON_HOME/kv. Processes may share
    # one (blocks are content-addressed files renamed into place): a cluster's workers do.
    kv_dir: Path | None = field(default_factory=lambda: _path_env("COREASON_KV_DIR"))

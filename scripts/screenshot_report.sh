#!/usr/bin/env bash
# Render a run's report.html to a PNG with headless Chromium (Debian package `chromium`), for a visual check.
#   scripts/screenshot_report.sh RUN_DIR_OR_HTML [OUT.png] [WIDTHxHEIGHT]
# Writes OUT.png (default: next to the HTML, report.png). Installs chromium with apt-get if missing (as root).
set -euo pipefail
src=${1:?usage: scripts/screenshot_report.sh RUN_DIR_OR_HTML [OUT.png] [WIDTHxHEIGHT]}
if [[ -d "$src" ]]; then html="$src/report.html"; else html="$src"; fi
[[ -f "$html" ]] || { echo "error: $html not found; run \`histowsss report RUN_DIR\` first" >&2; exit 2; }
html=$(cd "$(dirname "$html")" && pwd)/$(basename "$html")
out=${2:-$(dirname "$html")/report.png}
size=${3:-1400x3000}
browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z "$browser" ]]; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get install -y chromium >/dev/null || { apt-get update >/dev/null && apt-get install -y chromium >/dev/null; }
    browser=$(command -v chromium)
  else
    echo "error: chromium not found; install it (sudo apt-get install -y chromium)" >&2; exit 2
  fi
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --no-first-run --hide-scrollbars --user-data-dir="$profile" --screenshot="$out" --window-size="${size/x/,}" \
  "file://$html" 2>/dev/null
echo "$out"

#!/usr/bin/env bash
# Renders an HTML report (e.g. the report.html of `msae synth-bench`) in headless Chromium and writes a
# PNG screenshot, to check that the page and its inline SVG plots render.
# Usage: scripts/screenshot_report.sh REPORT.html OUT.png [WIDTH HEIGHT]
# Needs Debian's chromium package (apt-get install chromium); it is deliberately not in
# scripts/install-deps.sh (too big for CI). Exit status: 0 when the PNG was written and is non-empty.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 REPORT.html OUT.png [WIDTH HEIGHT]" >&2
  exit 2
fi
report=$(realpath "$1")
out=$(realpath -m "$2")
width=${3:-1280}
height=${4:-4000}
browser=""
for b in chromium chromium-browser google-chrome; do
  if command -v "$b" > /dev/null; then browser=$b; break; fi
done
if [[ -z "$browser" ]]; then
  echo "$0: no chromium found; install it with: sudo apt-get install chromium" >&2
  exit 1
fi
[[ -f "$report" ]] || { echo "$0: $report does not exist" >&2; exit 1; }
rm -f "$out"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# --no-sandbox: headless runs as root in containers; the page is a local file with no scripts.
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
  --window-size="$width,$height" --screenshot="$out" "file://$report" > /dev/null 2>&1 || true
if [[ ! -s "$out" ]]; then
  echo "$0: chromium wrote no screenshot to $out" >&2
  exit 1
fi
echo "$out"

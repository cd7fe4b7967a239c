#!/usr/bin/env bash
# Builds msae and runs the default test suite (ctest labels "unit" and "browser": the feature browser in
# headless Chromium, skipped with a message when chromium is absent).
#   scripts/test.sh             Release build in build/, all unit and browser tests
#   scripts/test.sh --sanitize  AddressSanitizer + UndefinedBehaviorSanitizer build in build-asan/ (skips the
#                               "recovery" test, which trains for real and only repeats the same code paths)
#   scripts/test.sh --slow      also the long checks (ctest label "slow")
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build
CMAKE_ARGS=(-DCMAKE_BUILD_TYPE=Release)
LABELS="unit|browser"
EXCLUDE=""
for arg in "$@"; do
  case "$arg" in
    --sanitize) BUILD=build-asan; CMAKE_ARGS=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DMSAE_SANITIZE=ON); EXCLUDE="recovery" ;;
    --slow) LABELS="unit|browser|slow" ;;
    *) echo "usage: scripts/test.sh [--sanitize] [--slow]" >&2; exit 2 ;;
  esac
done
if [ "${CI:-}" = "true" ]; then CMAKE_ARGS+=(-DMSAE_WERROR=ON); fi
cmake -S . -B "$BUILD" "${CMAKE_ARGS[@]}" >/dev/null
cmake --build "$BUILD" -j"$(nproc)"
cd "$BUILD"
ctest -L "$LABELS" ${EXCLUDE:+-LE "$EXCLUDE"} --output-on-failure -j"$(nproc)"

#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, docs/fuzzing.md) with clang in build-fuzz/ and runs them.
#   scripts/fuzz.sh --smoke                 every target for 25 s (CI runs this after the tests)
#   scripts/fuzz.sh --time 1800 npy         one target for 1800 s (a long run; see docs/fuzzing.md)
#   scripts/fuzz.sh [--time S] [TARGET...]  targets: npy safetensors sae_dir (default: all)
# Each run starts from the committed seeds (fuzz/corpus/TARGET) plus what earlier runs on this machine
# found (build-fuzz/work/TARGET), and prints libFuzzer's final stats and the CPU time used. Exits non-zero
# on any crash, sanitizer report, leak, timeout or out-of-memory; the reproducer is left in build-fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=25
TARGETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SECONDS_EACH=25 ;;
    --time) SECONDS_EACH="$2"; shift ;;
    npy|safetensors|sae_dir|checkpoint) TARGETS+=("$1") ;;
    *) echo "usage: scripts/fuzz.sh [--smoke | --time SECONDS] [npy|safetensors|sae_dir|checkpoint ...]" >&2; exit 2 ;;
  esac
  shift
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(npy safetensors sae_dir checkpoint)
BUILD=build-fuzz
CC=clang CXX=clang++ cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMSAE_FUZZ=ON \
  -DMSAE_BUILD_TESTS=OFF -DMSAE_PYTHON=OFF >/dev/null
cmake --build "$BUILD" -j"$(nproc)" --target "${TARGETS[@]/#/fuzz_}" >/dev/null
mkdir -p "$BUILD/logs"
status=0
for t in "${TARGETS[@]}"; do
  work="$BUILD/work/$t"
  mkdir -p "$work"
  log="$BUILD/logs/$t.log"
  echo "fuzz_$t: ${SECONDS_EACH} s (log: $log)"
  TIMEFORMAT="fuzz_$t: cpu user %U s, sys %S s, wall %R s"
  # -timeout: one input taking over 10 s is a finding; -rss_limit_mb: so is using over 2 GiB.
  # Reproducers (crash-*, leak-*, timeout-*, oom-*) go to $BUILD/.
  if ! time ASAN_OPTIONS=detect_leaks=1 "$BUILD/fuzz/fuzz_$t" -max_total_time="$SECONDS_EACH" -max_len=8192 \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$BUILD/" \
      "$work" "fuzz/corpus/$t" >"$log" 2>&1; then
    echo "fuzz_$t: FAILED; tail of $log:" >&2
    tail -40 "$log" >&2
    status=1
  fi
  grep -E "^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)" "$log" | tr '\n' ' '
  grep -E "^#[0-9]+.*(DONE|cov:)" "$log" | tail -1
done
exit $status

#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, docs/fuzzing.md) with clang in build-fuzz/ and runs them.
#   scripts/fuzz.sh --smoke                 every target for 25 s (CI runs this after the tests)
#   scripts/fuzz.sh --time 1800 npy         one target for 1800 s of wall-clock time
#   scripts/fuzz.sh --cpu 1800 npy          one target until it has used 1800 s of CPU (on a busy machine;
#                                           stopped with SIGINT, which makes libFuzzer print its stats)
#   scripts/fuzz.sh [--time S] [TARGET...]  targets: npy safetensors sae_dir checkpoint (default: all)
# Each run starts from the committed seeds (fuzz/corpus/TARGET) plus what earlier runs on this machine
# found (build-fuzz/work/TARGET), and prints libFuzzer's final stats and the CPU time used. Exits non-zero
# on any crash, sanitizer report, leak, timeout or out-of-memory; the reproducer is left in build-fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=25
CPU_EACH=0
TARGETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SECONDS_EACH=25 ;;
    --time) SECONDS_EACH="$2"; shift ;;
    --cpu) CPU_EACH="$2"; SECONDS_EACH=1000000; shift ;;
    npy|safetensors|sae_dir|checkpoint) TARGETS+=("$1") ;;
    *) echo "usage: scripts/fuzz.sh [--smoke | --time SECONDS | --cpu SECONDS] [npy|safetensors|sae_dir|checkpoint ...]" >&2; exit 2 ;;
  esac
  shift
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(npy safetensors sae_dir checkpoint)
BUILD=build-fuzz
# The targets read files in one process: no MPI (its uninstrumented library would only add to what
# LeakSanitizer sees).
CC=clang CXX=clang++ cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMSAE_FUZZ=ON \
  -DMSAE_BUILD_TESTS=OFF -DMSAE_PYTHON=OFF -DMSAE_MPI=OFF >/dev/null
cmake --build "$BUILD" -j"$(nproc)" --target "${TARGETS[@]/#/fuzz_}" >/dev/null
mkdir -p "$BUILD/logs"
# run_target TARGET WORK_DIR LOG: one libFuzzer run; with --cpu, a watcher stops it by CPU time.
run_target() {
  ASAN_OPTIONS=detect_leaks=1 "$BUILD/fuzz/fuzz_$1" -max_total_time="$SECONDS_EACH" -max_len=8192 \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$BUILD/" \
    "$2" "fuzz/corpus/$1" >"$3" 2>&1 &
  local pid=$! tck used=0 ut st stopped=0 rc=0
  tck=$(getconf CLK_TCK)
  if [ "$CPU_EACH" -gt 0 ]; then
    while kill -0 "$pid" 2>/dev/null; do
      sleep 5
      read -r ut st < <(awk '{print $14, $15}' "/proc/$pid/stat" 2>/dev/null || echo "0 0")
      used=$(((ut + st) / tck))
      if [ "$used" -ge "$CPU_EACH" ]; then kill -INT "$pid" 2>/dev/null || true; stopped=1; break; fi
    done
  fi
  wait "$pid" || rc=$?
  # libFuzzer exits non-zero when interrupted; that is our stop, not a finding, unless a sanitizer
  # or libFuzzer itself reported one before it.
  if [ "$stopped" = 1 ] && [ "$rc" != 0 ] && grep -q "libFuzzer: run interrupted" "$3" &&
      ! grep -qE "^==[0-9]+==ERROR|^SUMMARY: |^artifact_prefix=|Test unit written" "$3"; then
    rc=0
  fi
  return "$rc"
}
status=0
for t in "${TARGETS[@]}"; do
  work="$BUILD/work/$t"
  mkdir -p "$work"
  log="$BUILD/logs/$t.log"
  if [ "$CPU_EACH" -gt 0 ]; then limit="${CPU_EACH} s of CPU"; else limit="${SECONDS_EACH} s"; fi
  echo "fuzz_$t: $limit (log: $log)"
  TIMEFORMAT="fuzz_$t: cpu user %U s, sys %S s, wall %R s"
  # -timeout: one input taking over 10 s is a finding; -rss_limit_mb: so is using over 2 GiB.
  # Reproducers (crash-*, leak-*, timeout-*, oom-*) go to $BUILD/.
  if ! time run_target "$t" "$work" "$log"; then
    echo "fuzz_$t: FAILED; tail of $log:" >&2
    tail -40 "$log" >&2
    status=1
  fi
  grep -E "^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)" "$log" | tr '\n' ' '
  grep -E "^#[0-9]+.*(DONE|cov:)" "$log" | tail -1
done
exit $status

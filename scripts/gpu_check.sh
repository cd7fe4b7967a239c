#!/usr/bin/env bash
# The GPU check of the cuda engine (docs/cuda.md), in two halves:
#
#   scripts/gpu_check.sh pack     here, on the build machine (no GPU needed): builds build-cuda/ (-DMSAE_CUDA=ON,
#                                 x86-64-v3, no MPI, no Python; only msae and the gpu tests) and packs what the
#                                 device run needs into build-cuda/gpu/: the binaries and the host libraries the
#                                 device image lacks (OpenBLAS, gfortran, ...), xz-compressed. Prints its size.
#   scripts/gpu_check.sh device   on the device machine, from the repository root, with build-cuda/gpu carried:
#                                 nvidia-smi, the gpu tests, then `msae bench --engine cuda` at d=768/D=16384 and
#                                 d=2304/D=36864 (k=32, B=4096) in fp32, bf16 and tf32, then the PyTorch
#                                 baseline; everything under $OUT (6 files: env.txt, tests.log, bench.txt,
#                                 bench.jsonl, torch_baseline.txt, the torch baseline only with torch there).
#
# The device call (one command; see docs/cuda.md):
#   run(command="bash scripts/gpu_check.sh device", carry=["build-cuda/gpu"], timeout_s=480)
set -uo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
build=${MSAE_CUDA_BUILD:-build-cuda}
pack=$build/gpu
bins=(msae tests/test_cuda tests/test_engines tests/test_cuda_select)

do_pack() {
  cd "$here" || exit 1
  export PATH=/usr/local/cuda/bin:$PATH
  if [ ! -f "$build/CMakeCache.txt" ]; then
    CCACHE_BASEDIR=/work cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
      -DMSAE_WERROR=ON -DMSAE_CUDA=ON -DMSAE_NATIVE=OFF -DCMAKE_CXX_FLAGS=-march=x86-64-v3 \
      -DCMAKE_C_FLAGS=-march=x86-64-v3 -DMSAE_MPI=OFF -DMSAE_PYTHON=OFF \
      -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc || exit 1
  fi
  cmake --build "$build" -j2 --target msae test_cuda test_engines test_cuda_select || exit 1
  rm -rf "$pack"
  mkdir -p "$pack/lib"
  for b in "${bins[@]}"; do
    cp "$build/$b" "$pack/" && strip "$pack/$(basename "$b")"
  done
  # Host libraries the binaries need beyond the C/C++ runtime and the CUDA libraries the device image has.
  for b in "${bins[@]}"; do ldd "$build/$b"; done | awk '/=> \// {print $1, $3}' | sort -u |
    while read -r name path; do
      case "$name" in
        libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
        libcuda.so*|libcublas.so*|libcublasLt.so*|libcudart.so*) ;;
        *) cp -L "$path" "$pack/lib/$name" ;;
      esac
    done
  tar -C "$pack/lib" -cJf "$pack/hostlibs.tar.xz" . && rm -rf "$pack/lib"
  git -C "$here" rev-parse HEAD > "$pack/COMMIT"
  du -sh "$pack"
  ls -la "$pack"
  echo "carry: $pack   (device: bash scripts/gpu_check.sh device)"
}

do_device() {
  cd "$here" || exit 1
  out=${OUT:-/tmp/gpu_check_out}
  mkdir -p "$out"
  [ -x "$pack/msae" ] || { echo "no $pack/msae: run 'scripts/gpu_check.sh pack' here and carry $pack"; exit 2; }
  libs=/tmp/msae-hostlibs
  mkdir -p "$libs" && tar -C "$libs" -xJf "$pack/hostlibs.tar.xz"
  # cuBLAS 13: the toolkit's, else a wheel's (PyTorch's nvidia-cublas).
  cublas=$(ls /usr/local/cuda/lib64/libcublas.so.13 2>/dev/null | head -1)
  [ -n "$cublas" ] || cublas=$(find /usr/local /opt /usr/lib -name 'libcublas.so.13' 2>/dev/null | head -1)
  cublaslt=$(find "$(dirname "${cublas:-/nonexistent}")" /usr/local /opt /usr/lib -name 'libcublasLt.so.13' 2>/dev/null | head -1)
  export LD_LIBRARY_PATH="$libs:$(dirname "${cublas:-/x}"):$(dirname "${cublaslt:-/x}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  {
    echo "commit of the pack: $(cat "$pack/COMMIT" 2>/dev/null)"
    echo "cublas: $cublas  cublasLt: $cublaslt"
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    nvcc --version 2>/dev/null | tail -2
    ldd "$pack/msae"
    lscpu | head -20
  } > "$out/env.txt" 2>&1
  cat "$out/env.txt" | head -40

  status=0
  {
    echo "== test_cuda_select"; timeout 120 "$pack/test_cuda_select" || status=1
    echo "== test_cuda"; timeout 240 "$pack/test_cuda" || status=1
    echo "== test_engines"; timeout 300 "$pack/test_engines" || status=1
    echo "== tests: $([ $status = 0 ] && echo PASSED || echo FAILED)"
  } > "$out/tests.log" 2>&1
  grep -E "^\[ (engine|device|cuda vs)|FAILED|PASSED|Failure|error|SKIPPED|^== " "$out/tests.log" | head -80

  # msae bench --engine cuda at both shapes, fp32 then bf16 then tf32 (the encoder GEMM alone in the same
  # precision beside the step): one JSON line per run into bench.jsonl, a summary line each into bench.txt.
  # About 10-20 s a run; tf32 is skipped when the script has used more than 330 s (of the call's 480).
  : > "$out/bench.jsonl"
  {
    for prec in fp32 bf16 tf32; do
      for shape in "768 16384" "2304 36864"; do
        set -- $shape
        if [ "$prec" = tf32 ] && [ "$SECONDS" -gt 330 ]; then echo "skipped: tf32 d=$1 ($SECONDS s used)"; continue; fi
        line=$(timeout 100 "$pack/msae" bench --engine cuda --cuda-precision "$prec" --d-in "$1" --d-sae "$2" \
          --k 32 --batch 4096 --steps 10 --warmup 3 --json 2>&1)
        echo "$line" >> "$out/bench.jsonl"
        summary=$(echo "$line" | grep -oE '"(step_s|encoder_gemm_s|step_over_gemm)":[^,]*' | tr '\n' ' ')
        echo "$prec d=$1 D=$2: ${summary:-$(echo "$line" | tail -1 | cut -c1-300)}"
      done
    done
    echo "phases and the rest: bench.jsonl ($SECONDS s used)"
  } > "$out/bench.txt" 2>&1
  cat "$out/bench.txt"
  # the PyTorch baseline of the same GPU, when the device has torch (bench/torch_gpu_baseline.py, if present)
  # (skipped past 400 s: the call has 480)
  if [ "$SECONDS" -gt 400 ]; then
    echo "torch baseline skipped: $SECONDS s used" > "$out/torch_baseline.txt"
  elif [ -f bench/torch_gpu_baseline.py ] && python3 -c 'import torch' 2>/dev/null; then
    timeout 120 python3 bench/torch_gpu_baseline.py > "$out/torch_baseline.txt" 2>&1
    cat "$out/torch_baseline.txt"
  fi
  return $status
}

case "${1:-}" in
  pack) do_pack ;;
  device) do_device ;;
  *) echo "usage: scripts/gpu_check.sh pack|device" >&2; exit 2 ;;
esac

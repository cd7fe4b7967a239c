#!/usr/bin/env bash
# One command for a fresh Debian 12 machine: install dependencies, build msae (Release), and train the
# default Matryoshka SAE on the embedded synthetic dataset into runs/default.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
./build/msae train --out runs/default --overwrite
./build/msae inspect runs/default

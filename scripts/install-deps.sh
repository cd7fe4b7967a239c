#!/usr/bin/env bash
# Installs msae's build and test dependencies from Debian 12's packages (docs/dependencies.md says why
# each one is needed). Runs apt-get through sudo when not root.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PACKAGES=(
  build-essential cmake git
  libopenblas-dev libopenblas-pthread-dev
  libdnnl-dev
  nlohmann-json3-dev libcli11-dev
  libgtest-dev
  pybind11-dev python3-dev python3-numpy
  libopenmpi-dev openmpi-bin
  clang libclang-rt-14-dev libomp-14-dev
  chromium
)
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
echo "msae: dependencies installed (${PACKAGES[*]})"

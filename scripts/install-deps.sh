#!/usr/bin/env bash
# Installs the Debian packages memvisor's build and tests need, if they are missing.
# libclang-dev: bindgen in the userfaultfd crate. g++: libFuzzer's C++ sources (libfuzzer-sys, for
# the fuzz targets). Needs root (apt-get) only when something is missing.
set -euo pipefail
need=()
for pkg in libclang-dev g++; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

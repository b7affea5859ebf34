#!/usr/bin/env bash
# Installs the Debian packages memvisor's build and tests need, if they are missing.
# libclang-dev: bindgen in the userfaultfd crate. cpio, lz4: scripts/guest-assets.sh (the Linux
# guest's initramfs and the vmlinux inside Debian's bzImage). g++: libFuzzer's C++ sources
# (libfuzzer-sys, for the fuzz targets). Needs root (apt-get) only when something is missing.
set -euo pipefail
need=()
for pkg in libclang-dev cpio lz4 g++; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

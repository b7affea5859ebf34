#!/usr/bin/env bash
# Installs the Debian packages memvisor's build and tests need, if they are missing.
# libclang-dev: bindgen in the userfaultfd crate. cpio, lz4: scripts/guest-assets.sh (the Linux
# guest's initramfs and the vmlinux inside Debian's bzImage). g++: libFuzzer's C++ sources
# (libfuzzer-sys, for the fuzz targets). Needs root (apt-get) only when something is missing.
# Usage: scripts/install-deps.sh [PACKAGE...]   (other scripts pass their own list, e.g. the
# test-kernel build's; without arguments, the list above)
set -euo pipefail
pkgs=("$@")
((${#pkgs[@]})) || pkgs=(libclang-dev cpio lz4 g++)
need=()
for pkg in "${pkgs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

#!/usr/bin/env bash
# Installs the Debian packages memvisor's build and tests need, if they are missing.
# libclang-dev: bindgen in the userfaultfd crate. cpio, lz4: scripts/guest-assets.sh (the Linux
# guest's initramfs and the vmlinux inside Debian's bzImage). g++: libFuzzer's C++ sources
# (libfuzzer-sys, for the fuzz targets). iproute2: the network namespaces and taps of the
# virtio-net tests and `scripts/linux-demo.sh --net`. e2fsprogs: `linux-demo.sh --disk` (mkfs.ext4,
# debugfs). libc6-dev: glibc's static libc.a (memvisor is linked statically, .cargo/config.toml;
# g++ pulls it in, named for clarity). Needs root (apt-get) only when something is missing.
# Usage: scripts/install-deps.sh [PACKAGE...]   (other scripts pass their own list, e.g. the
# test-kernel build's; without arguments, the list above)
set -euo pipefail
pkgs=("$@")
((${#pkgs[@]})) || pkgs=(libclang-dev cpio lz4 g++ libc6-dev iproute2 e2fsprogs)
need=()
for pkg in "${pkgs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

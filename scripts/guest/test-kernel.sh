#!/usr/bin/env bash
# Builds memvisor's Linux test kernel and its initramfs (called by scripts/guest-assets.sh):
#   vmlinux          Debian's linux-source-6.12, `make tinyconfig` + kernel/configs/kvm_guest.config
#                    + linux-test-kernel.config (this directory), with linux-syscall-entry.patch
#                    (completes the half-done SYSCALL of hosts whose KVM has no VMX/SVM; inert
#                    elsewhere), built with `make vmlinux` (ELF: no decompressor to emulate)
#   initramfs.cpio   uncompressed newc cpio (decompression would run emulated): Debian's
#                    busybox-static, its applet links, /etc/fstab, test-init.sh as /init and
#                    memvisor's test agent (guest-agent/, built here static with cargo)
# in $MEMVISOR_ASSETS_ROOT/linux-test/. `.complete` records a format number and hashes of the
# inputs; a part whose inputs did not change is not rebuilt (the kernel build tree stays in
# linux-test/build, so a changed config fragment rebuilds incrementally). First build ~5 min
# on 2 idle cores (make -j$(nproc)); installs linux-source-6.12 and the build tools with apt-get
# when missing.
#
# Usage: test-kernel.sh [--cached-dir]
#   --cached-dir   print the directory if a complete, current build is cached; else exit 3
#                  (never builds: for tests)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=${MEMVISOR_ASSETS_ROOT:?set by scripts/guest-assets.sh}
dir=$root/linux-test
# Bumped whenever what this script builds changes, so an older cache is rebuilt.
format=1
src_pkg=linux-source-6.12
fragment=$here/linux-test-kernel.config
patch_file=$here/linux-syscall-entry.patch
init_file=$here/test-init.sh

hash_of() { cat "$@" | sha256sum | cut -c1-16; }
kernel_hash=$(hash_of "$fragment" "$patch_file")
repo=$(cd "$here/../.." && pwd)
initramfs_hash=$(hash_of "$init_file" "$repo/guest-agent/Cargo.toml" "$repo"/guest-agent/src/*.rs)
stamp_line() { sed -n "s/^$1 //p" "$dir/.complete" 2>/dev/null || true; }
cached() {
  [[ -f "$dir/vmlinux" && -f "$dir/initramfs.cpio" &&
     "$(head -n1 "$dir/.complete" 2>/dev/null)" == "format $format" &&
     "$(stamp_line kernel)" == "$kernel_hash" && "$(stamp_line initramfs)" == "$initramfs_hash" ]]
}

if [[ "${1:-}" == "--cached-dir" ]]; then
  if cached; then echo "$dir"; exit 0; fi
  echo "no current test kernel in $dir: run scripts/guest-assets.sh (builds it, ~5 min)" >&2
  exit 3
fi
if cached; then
  echo "guest-assets: test kernel cached ($dir)"
  echo "test vmlinux:   $dir/vmlinux"
  echo "test initramfs: $dir/initramfs.cpio"
  exit 0
fi

mkdir -p "$dir"
old_format=$(head -n1 "$dir/.complete" 2>/dev/null || true)
old_kernel=$(stamp_line kernel)
rm -f "$dir/.complete"

if [[ "$old_format" != "format $format" || "$old_kernel" != "$kernel_hash" ||
      ! -f "$dir/vmlinux" ]]; then
  "$here/../install-deps.sh" "$src_pkg" flex bison libelf-dev bc make gcc xz-utils
  src_ver=$(dpkg-query -W -f '${Version}' "$src_pkg")
  build=$dir/build
  want_src="$src_ver $(hash_of "$patch_file")"
  if [[ "$(cat "$build/.memvisor-source" 2>/dev/null)" != "$want_src" ]]; then
    echo "guest-assets: unpacking $src_pkg $src_ver and applying $(basename "$patch_file")"
    rm -rf "$build"
    mkdir -p "$build"
    tar -xf "/usr/src/$src_pkg.tar.xz" -C "$build" --strip-components=1
    patch -s -p1 -d "$build" <"$patch_file"
    echo "$want_src" >"$build/.memvisor-source"
  fi
  echo "guest-assets: configuring (tinyconfig + kvm_guest.config + $(basename "$fragment"))"
  make -s -C "$build" tinyconfig >/dev/null
  (cd "$build" && scripts/kconfig/merge_config.sh -m .config kernel/configs/kvm_guest.config \
    "$fragment" >/dev/null)
  make -s -C "$build" olddefconfig >/dev/null
  # Every option the fragment sets must have survived olddefconfig (a dependency missing from
  # the fragment would silently drop it).
  while IFS= read -r line; do
    case "$line" in
      CONFIG_*=*)
        grep -qxF "$line" "$build/.config" ||
          { echo "guest-assets: $line did not survive olddefconfig (missing dependency?)" >&2; exit 2; } ;;
    esac
  done <"$fragment"
  jobs=$(nproc)
  echo "guest-assets: building the test kernel (make -j$jobs vmlinux; ~5 min on 2 idle cores)"
  t0=$(date +%s)
  if ! make -s -C "$build" -j"$jobs" vmlinux >"$dir/build.log" 2>&1; then
    tail -n 30 "$dir/build.log" >&2
    echo "guest-assets: the test kernel build failed; full log: $dir/build.log" >&2
    exit 2
  fi
  echo "guest-assets: test kernel built in $(($(date +%s) - t0)) s"
  cp "$build/vmlinux" "$dir/vmlinux.tmp"
  mv "$dir/vmlinux.tmp" "$dir/vmlinux"
  echo "$src_ver" >"$dir/source-version"
fi

echo "guest-assets: building the test initramfs (busybox-static, /init)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q busybox-static >/dev/null 2>"$work/apt.err") || {
  apt-get update -qq
  (cd "$work" && apt-get download -q busybox-static >/dev/null)
}
dpkg-deb -x "$work"/busybox-static_*.deb "$work/x"
init=$work/initramfs
mkdir -p "$init"/{bin,dev,proc,sys,tmp,mnt,etc}
mknod -m 600 "$init/dev/console" c 5 1
cp "$work/x/bin/busybox" "$init/bin/busybox"
# Applet links made here: `busybox --install` in the guest would cost a system call per link.
for a in $("$init/bin/busybox" --list); do
  [[ "$a" == busybox ]] || ln -sf busybox "$init/bin/$a"
done
cat >"$init/etc/fstab" <<'FSTAB'
proc /proc proc defaults 0 0
sysfs /sys sysfs defaults 0 0
devtmpfs /dev devtmpfs defaults 0 0
tmpfs /mnt tmpfs size=90% 0 0
FSTAB
cp "$init_file" "$init/init"
chmod 755 "$init/init"
echo "guest-assets: building the test agent (cargo, static)"
command -v cargo >/dev/null || { echo "guest-assets: cargo is missing (the test agent is Rust)" >&2; exit 2; }
RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" cargo build -q --release \
  --manifest-path "$repo/Cargo.toml" -p memvisor-guest-agent \
  --target x86_64-unknown-linux-gnu --target-dir "$dir/agent-target"
cp "$dir/agent-target/x86_64-unknown-linux-gnu/release/memvisor-agent" "$init/bin/memvisor-agent"
(cd "$init" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) \
  >"$dir/initramfs.cpio.tmp"
mv "$dir/initramfs.cpio.tmp" "$dir/initramfs.cpio"

printf '%s\n' "format $format" "kernel $kernel_hash" "initramfs $initramfs_hash" \
  "source $(cat "$dir/source-version" 2>/dev/null || echo unknown)" >"$dir/.complete"
echo "guest-assets: test kernel ready"
echo "test vmlinux:   $dir/vmlinux ($(du --apparent-size -h "$dir/vmlinux" | cut -f1))"
echo "test initramfs: $dir/initramfs.cpio ($(du --apparent-size -h "$dir/initramfs.cpio" | cut -f1))"

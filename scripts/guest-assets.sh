#!/usr/bin/env bash
# Builds the Linux guest assets for `memvisor run --kernel ... --initrd ...` from Debian packages
# only: the cloud kernel image (linux-image-<abi>-cloud-amd64-unsigned) and busybox-static are
# fetched with `apt-get download` (never installed), unpacked with `dpkg-deb -x`, and turned into
#   vmlinuz            the distribution's bzImage, unchanged
#   vmlinux            the same kernel as an ELF, decompressed here from the bzImage's payload:
#                      where KVM emulates guest ring-0 code (no VMX/SVM) the bzImage's own
#                      decompressor takes minutes, the ELF starts at once
#   initramfs.cpio.gz  busybox, the modules virtio_balloon needs (those not built in) and /init
# in ${MEMVISOR_ASSETS:-/var/cache/memvisor/guest-assets}/<kernel-version>/ (~/.cache/memvisor/...
# when /var/cache is not writable). A second run finds the
# cache and only prints the paths. Prints what it downloads and installs.
#
# A plain run also builds memvisor's Linux test kernel and its initramfs (scripts/guest/
# test-kernel.sh: Debian's linux-source-6.12 with the repository's config fragment and
# system-call patch, busybox-static, an uncompressed cpio) in <cache root>/linux-test/, cached
# the same way (~5 min the first time).
#
# Usage: scripts/guest-assets.sh [--print-dir | --test-dir]
#   --print-dir   print only the cloud kernel's asset directory (builds it when missing)
#   --test-dir    print the test kernel's directory if it is cached and current, else exit 3
#                 (never builds)
# Environment: MEMVISOR_ASSETS (cache root), MEMVISOR_KERNEL_PACKAGE (override the package name),
# MEMVISOR_TEST_KERNEL=0 (a plain run skips the test kernel).
#
# The /init (busybox sh) mounts proc/sys/dev, loads the modules, prints /proc/meminfo and reads
# these kernel command-line options:
#   memvisor.fill=SIZE      fill SIZE (e.g. 256M) of memory (a tmpfs file) after boot
#   memvisor.release=1      free that memory again at once (the guest has touched it, so the
#                           host backs it, and it is free for a balloon to take)
#   memvisor.report=SECS    print MemTotal/MemFree every SECS seconds (default 0: once, then idle)
#   memvisor.exit=1         reboot (memvisor stops cleanly) once done instead of idling
set -euo pipefail

print_dir=0
[[ "${1:-}" == "--print-dir" ]] && print_dir=1
say() { if ((print_dir)); then echo "$*" >&2; else echo "$*"; fi; }

default_root=/var/cache/memvisor/guest-assets
if ! mkdir -p "$default_root" 2>/dev/null || [[ ! -w "$default_root" ]]; then
  default_root=${XDG_CACHE_HOME:-$HOME/.cache}/memvisor/guest-assets
fi
root=${MEMVISOR_ASSETS:-$default_root}
export MEMVISOR_ASSETS_ROOT=$root
here=$(cd "$(dirname "$0")" && pwd)
# The test kernel (scripts/guest/test-kernel.sh): built (or found cached) by a plain run.
if [[ "${1:-}" == "--test-dir" ]]; then exec bash "$here/guest/test-kernel.sh" --cached-dir; fi
if ((!print_dir)) && [[ "${MEMVISOR_TEST_KERNEL:-1}" != 0 ]]; then
  bash "$here/guest/test-kernel.sh"
fi
# Bumped whenever what this script builds changes, so an older cache is rebuilt.
format=2
need_tools=()
for t in apt-get apt-cache dpkg-deb; do
  command -v "$t" >/dev/null || { echo "guest-assets: $t is missing (needs a Debian host with apt)" >&2; exit 2; }
done
command -v cpio >/dev/null || need_tools+=(cpio)
command -v gzip >/dev/null || need_tools+=(gzip)
command -v xz >/dev/null || need_tools+=(xz-utils)
command -v lz4 >/dev/null || need_tools+=(lz4)

# The current cloud kernel: what the metapackage linux-image-cloud-amd64 depends on.
pick_package() {
  if [[ -n "${MEMVISOR_KERNEL_PACKAGE:-}" ]]; then echo "$MEMVISOR_KERNEL_PACKAGE"; return; fi
  local dep
  dep=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n1)
  if [[ -n "$dep" ]]; then echo "${dep}-unsigned"; return; fi
  apt-cache search --names-only '^linux-image-[0-9].*-cloud-amd64-unsigned$' 2>/dev/null |
    awk '{print $1}' | sort -V | tail -n1
}

pkg=$(pick_package || true)
if [[ -z "$pkg" ]]; then
  say "guest-assets: apt knows no cloud kernel package; running apt-get update"
  apt-get update -qq
  pkg=$(pick_package)
fi
[[ -n "$pkg" ]] || { echo "guest-assets: no linux-image-*-cloud-amd64-unsigned package in apt's lists" >&2; exit 2; }
kver=${pkg#linux-image-}
kver=${kver%-unsigned}
dir="$root/$kver"

if [[ -f "$dir/vmlinuz" && -f "$dir/vmlinux" && -f "$dir/initramfs.cpio.gz" &&
      "$(head -n1 "$dir/.complete" 2>/dev/null)" == "format $format" ]]; then
  if ((print_dir)); then echo "$dir"; exit 0; fi
  echo "guest-assets: cached ($pkg)"
  echo "kernel:    $dir/vmlinuz"
  echo "vmlinux:   $dir/vmlinux"
  echo "initramfs: $dir/initramfs.cpio.gz"
  exit 0
fi

if ((${#need_tools[@]})); then
  say "guest-assets: installing ${need_tools[*]} (apt-get install)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_tools[@]}" >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/dl"
download() {
  local p=$1
  say "guest-assets: downloading $p (apt-get download, not installed)"
  if ! (cd "$work/dl" && apt-get download -q "$p" >/dev/null 2>"$work/apt.err"); then
    say "guest-assets: apt-get download $p failed; running apt-get update and retrying"
    apt-get update -qq
    (cd "$work/dl" && apt-get download -q "$p" >/dev/null)
  fi
}
download "$pkg"
download busybox-static
for deb in "$work"/dl/*.deb; do
  say "guest-assets: unpacking $(basename "$deb")"
  dpkg-deb -x "$deb" "$work/x"
done

x=$work/x
vmlinuz=$(ls "$x"/boot/vmlinuz-* | head -n1)
modroot=$(ls -d "$x"/lib/modules/* | head -n1)
modver=$(basename "$modroot")

# Modules virtio_balloon and its transports need, in load order (dependencies first), leaving out
# what modules.builtin says is built in. The package ships no modules.dep (depmod makes it at
# install time), so dependencies are read from each module's own `depends=` modinfo field.
want=(virtio_balloon virtio_pci virtio_mmio)
declare -A path_of=()
while IFS= read -r -d '' ko; do
  n=$(basename "$ko"); n=${n%%.ko*}; n=${n//-/_}
  path_of[$n]=$ko
done < <(find "$modroot/kernel" -name '*.ko*' -print0)
declare -A seen=()
order=()
modinfo_depends() {
  case "$1" in
    *.xz) xz -dc "$1" ;;
    *) cat "$1" ;;
  esac | grep -a -o 'depends=[^[:cntrl:]]*' | head -n1 | cut -d= -f2 | tr ',' ' '
}
resolve() {
  local name=${1//-/_} ko d
  ko=${path_of[$name]:-}
  [[ -n "$ko" ]] || return 0
  [[ -n "${seen[$name]:-}" ]] && return 0
  seen[$name]=1
  for d in $(modinfo_depends "$ko"); do resolve "$d"; done
  order+=("$ko")
}
builtin_list=()
for m in "${want[@]}"; do
  if grep -Eq "/${m//_/[-_]}\.ko$" "$modroot/modules.builtin" 2>/dev/null; then
    builtin_list+=("$m")
  elif [[ -z "${path_of[$m]:-}" ]]; then
    echo "guest-assets: $m is neither built into $modver nor a module of it" >&2; exit 2
  else
    resolve "$m"
  fi
done
say "guest-assets: built into $modver: ${builtin_list[*]:-(none of ${want[*]})}"

init=$work/initramfs
mkdir -p "$init"/{bin,dev,proc,sys,tmp,mnt,etc,lib/modules}
# The kernel opens /dev/console for /init before devtmpfs is mounted.
mknod -m 600 "$init/dev/console" c 5 1 2>/dev/null || true
cp "$x/bin/busybox" "$init/bin/busybox"
: >"$init/etc/memvisor-modules"
for src in "${order[@]}"; do
  base=$(basename "$src")
  case "$base" in
    *.ko.xz) xz -dc "$src" >"$init/lib/modules/${base%.xz}"; base=${base%.xz} ;;
    *.ko.zst) echo "guest-assets: $base is zstd-compressed; unsupported" >&2; exit 2 ;;
    *) cp "$src" "$init/lib/modules/$base" ;;
  esac
  echo "$base" >>"$init/etc/memvisor-modules"
done
say "guest-assets: modules in the initramfs: $(tr '\n' ' ' <"$init/etc/memvisor-modules")"
echo "$modver" >"$init/etc/memvisor-kernel"

cat >"$init/init" <<'EOF'
#!/bin/busybox sh
# memvisor guest init: modules, /proc/meminfo, optional memory fill and periodic reports.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "memvisor-init: started on $(uname -r)"
for m in $(cat /etc/memvisor-modules); do
  if insmod "/lib/modules/$m" 2>/tmp/err; then echo "memvisor-init: loaded $m"
  else echo "memvisor-init: insmod $m failed: $(cat /tmp/err)"; fi
done
for d in /sys/bus/virtio/devices/*; do
  [ -e "$d" ] || continue
  drv=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
  echo "memvisor-init: virtio device $(basename "$d") id $(cat "$d/device") driver ${drv:-none}"
done
cat /proc/meminfo
fill=; report=0; exit_after=0; release=0
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    memvisor.fill=*) fill=${arg#memvisor.fill=} ;;
    memvisor.report=*) report=${arg#memvisor.report=} ;;
    memvisor.exit=*) exit_after=${arg#memvisor.exit=} ;;
    memvisor.release=*) release=${arg#memvisor.release=} ;;
  esac
done
meminfo() {
  echo "memvisor-init: $(grep -E '^MemTotal:' /proc/meminfo | tr -s ' ') $(grep -E '^MemFree:' /proc/meminfo | tr -s ' ')"
}
if [ -n "$fill" ]; then
  n=${fill%[KkMmGg]}
  case "$fill" in
    *[Gg]) mib=$((n * 1024)) ;;
    *[Mm]) mib=$n ;;
    *[Kk]) mib=$((n / 1024)) ;;
    *) mib=$((n / 1048576)) ;;
  esac
  mount -t tmpfs -o size=$((mib + 1))m tmpfs /mnt
  echo "memvisor-init: filling $mib MiB"
  dd if=/dev/zero of=/mnt/fill bs=1M count="$mib" 2>/dev/null
  echo "memvisor-init: filled $mib MiB"
  if [ "$release" = 1 ]; then
    rm -f /mnt/fill
    echo "memvisor-init: released $mib MiB"
  fi
fi
meminfo
echo "memvisor-init: ready"
if [ "$exit_after" = 1 ]; then
  echo "memvisor-init: rebooting"
  reboot -f
fi
while true; do
  if [ "$report" -gt 0 ] 2>/dev/null; then sleep "$report"; meminfo
  else sleep 3600; fi
done
EOF
chmod 755 "$init/init"

# The bzImage's payload (boot protocol: payload_offset at 0x248, payload_length at 0x24c, from the
# end of the setup sectors) is the compressed ELF vmlinux.
extract_vmlinux() {
  local img=$1 out=$2 sects off len start magic
  sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$img" | tr -d ' ')
  ((sects == 0)) && sects=4
  off=$(od -An -tu4 -j $((0x248)) -N4 "$img" | tr -d ' ')
  len=$(od -An -tu4 -j $((0x24c)) -N4 "$img" | tr -d ' ')
  start=$(((sects + 1) * 512 + off))
  magic=$(od -An -tx1 -j "$start" -N4 "$img" | tr -d ' ')
  dd if="$img" of="$work/payload" iflag=skip_bytes,count_bytes skip="$start" count="$len" bs=1M status=none
  # The decompressors may complain about the 4-byte size the kernel build appends; the ELF
  # magic of the result is what counts.
  case "$magic" in
    02214c18) lz4 -dc "$work/payload" >"$out" 2>/dev/null || true ;;
    1f8b*) gzip -dc "$work/payload" >"$out" 2>/dev/null || true ;;
    fd377a58) xz -dc --single-stream "$work/payload" >"$out" 2>/dev/null || true ;;
    28b52ffd)
      if ! command -v zstd >/dev/null; then
        say "guest-assets: installing zstd (apt-get install)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zstd >/dev/null
      fi
      zstd -dcq "$work/payload" >"$out" 2>/dev/null || true ;;
    *) echo "guest-assets: unknown compression of the kernel payload (magic $magic)" >&2; return 1 ;;
  esac
  [[ "$(od -An -tx1 -N4 "$out" | tr -d ' ')" == 7f454c46 ]] ||
    { echo "guest-assets: the decompressed payload is not an ELF" >&2; return 1; }
}
say "guest-assets: extracting vmlinux (ELF) from $(basename "$vmlinuz")"
mkdir -p "$dir"
extract_vmlinux "$vmlinuz" "$dir/vmlinux.tmp"
mv "$dir/vmlinux.tmp" "$dir/vmlinux"
cp "$vmlinuz" "$dir/vmlinuz.tmp"
(cd "$init" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) |
  gzip -9 >"$dir/initramfs.cpio.gz.tmp"
mv "$dir/vmlinuz.tmp" "$dir/vmlinuz"
mv "$dir/initramfs.cpio.gz.tmp" "$dir/initramfs.cpio.gz"
printf '%s\n' "format $format" "$pkg" "$modver" >"$dir/.complete"
if ((print_dir)); then echo "$dir"; exit 0; fi
echo "guest-assets: built from $pkg and busybox-static"
echo "kernel:    $dir/vmlinuz"
echo "vmlinux:   $dir/vmlinux"
echo "initramfs: $dir/initramfs.cpio.gz ($(du -h "$dir/initramfs.cpio.gz" | cut -f1))"

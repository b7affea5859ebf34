#!/bin/sh
# /init of memvisor's Linux test guest (busybox sh; scripts/guest/test-kernel.sh puts it in an
# uncompressed initramfs with Debian's busybox-static). It talks to the host over the serial
# console: every line it prints starts with `memvisor-guest: `. It mounts, prints the virtio
# devices, /proc/interrupts and /proc/meminfo, then execs memvisor's test agent (guest-agent/,
# the same commands plus `verify` and `balloon`) or, without it, reads one command per line
# from the console itself:
#   meminfo        -> memvisor-guest: meminfo MemTotal: N MemFree: N MemAvailable: N   (kB)
#   fill MIB       fill MIB MiB of memory (a tmpfs file, zeros), then "filled MIB"
#   free           free it again, then "freed"
#   interrupts     the /proc/interrupts lines, each as "irq LINE"
#   echo TEXT      "echo TEXT" (a round trip through the console's input and output)
#   run COMMAND    run a shell command, then "ran STATUS"
#   poweroff       reboot (memvisor ends the run cleanly)
# Process spawns are few on purpose: where KVM emulates guest ring 0 each fork+exec takes
# seconds, while the shell's builtins (read, echo, case) make only system calls.
PATH=/bin
export PATH
# One process for every mount: /etc/fstab has proc, sysfs, devtmpfs and a tmpfs on /mnt.
mount -a
# Userspace output to the console needs the UART's interrupt; if it fails, /dev/kmsg still works.
if ! echo "memvisor-guest: console ok" 2>/dev/null; then
  exec >/dev/kmsg 2>&1
  echo "memvisor-guest: console write failed; output through /dev/kmsg"
fi
read -r release </proc/sys/kernel/osrelease
echo "memvisor-guest: started on $release"
if echo "memvisor-guest: write to /dev/ttyS0 ok" >/dev/ttyS0; then :; else
  echo "memvisor-guest: write to /dev/ttyS0 failed"
fi
say() { echo "memvisor-guest: $*"; }
interrupts() {
  while read -r line; do say "irq $line"; done </proc/interrupts
}
meminfo() {
  out=
  while read -r key value unit; do
    case "$key" in MemTotal:|MemFree:|MemAvailable:) out="$out $key $value" ;; esac
  done </proc/meminfo
  say "meminfo$out"
}
for d in /sys/bus/virtio/devices/*; do
  [ -e "$d" ] || continue
  read -r id <"$d/device"
  read -r features <"$d/features"
  drv=none
  if [ -e "$d/driver" ]; then cd -P "$d/driver" && drv=${PWD##*/}; cd /; fi
  say "virtio ${d##*/} device $id driver $drv features $features"
done
interrupts
meminfo
# memvisor's test agent (guest-agent/) takes over the console when it is there; it answers the
# same commands and more (fill with a pattern, verify, free, balloon).
if [ -x /bin/memvisor-agent ]; then exec /bin/memvisor-agent; fi
say "ready"
while read -r cmd arg; do
  case "$cmd" in
    meminfo) meminfo ;;
    fill)
      dd if=/dev/zero of=/mnt/fill bs=1M count="$arg" 2>/dev/null
      say "filled $arg" ;;
    free) rm -f /mnt/fill; say "freed" ;;
    interrupts) interrupts ;;
    echo) say "echo $arg" ;;
    run) sh -c "$arg"; say "ran $?" ;;
    poweroff) say "poweroff"; reboot -f ;;
    "") ;;
    *) say "unknown command $cmd" ;;
  esac
done
say "console input ended"
while :; do sleep 3600; done

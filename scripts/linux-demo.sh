#!/usr/bin/env bash
# Boots memvisor's Linux test guest (scripts/guest-assets.sh builds it) with a virtio balloon and
# the control API, inflates the balloon through the API, prints the guest's MemTotal (asked of
# the guest over its serial console) and the VMM's resident memory before and after, deflates,
# and exits 0 only when both moved as expected (MemTotal down by the balloon size and back; the
# host's residency down by about that much).
#
# Usage: scripts/linux-demo.sh [MIB]      (default 32; inflating runs at ~0.8 MiB/s where KVM
#                                          emulates guest ring 0, booting takes ~3-4 min there)
# Environment: MEMVISOR (the binary; default: target/release or target/debug, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-32}

bin=${MEMVISOR:-}
if [[ -z "$bin" ]]; then
  for b in target/release/memvisor target/debug/memvisor; do
    [[ -x "$b" ]] && { bin=$b; break; }
  done
fi
if [[ -z "$bin" ]]; then
  echo "linux-demo: building memvisor (cargo build --release)"
  cargo build --release -q
  bin=target/release/memvisor
fi
if ! dir=$(scripts/guest-assets.sh --test-dir 2>/dev/null); then
  echo "linux-demo: building the test kernel first (scripts/guest-assets.sh, ~5 min once)"
  MEMVISOR_TEST_KERNEL=1 scripts/guest-assets.sh >/dev/null
  dir=$(scripts/guest-assets.sh --test-dir)
fi

tmp=$(mktemp -d)
pid=
# Keeps the script's own exit status: under `set -e` the status of waiting for the killed VMM
# (130/143) would otherwise become it, and a successful demo exited 130.
cleanup() {
  local rc=$?
  if [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; then wait "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
mkfifo "$tmp/in"
console=$tmp/console.txt
sock=$tmp/api.sock
t0=$(date +%s)
"$bin" run --kernel "$dir/vmlinux" --initrd "$dir/initramfs.cpio" \
  --cmdline "console=ttyS0 reboot=k panic=1 printk.devkmsg=on" \
  --vcpus 1 -m size=256M,prealloc=on --balloon amount_mib=0,stats_polling_interval_s=1 \
  --api-sock "$sock" --console "$console" --timeout 1200 <"$tmp/in" >"$tmp/report.txt" 2>&1 &
pid=$!
exec 3>"$tmp/in"
elapsed() { echo "$(($(date +%s) - t0)) s"; }

# Waits (up to $2 s) for a new guest line starting with $1 and puts it (without the prefix) in
# $got. Not to be called in a subshell: $seen counts the guest lines already consumed.
seen=0
got=
expect() {
  local want=$1 limit=$2 start n line
  start=$(date +%s)
  while true; do
    n=0
    while IFS= read -r line; do
      n=$((n + 1))
      ((n <= seen)) && continue
      seen=$n
      if [[ "$line" == "$want"* ]]; then got=$line; return 0; fi
    done < <(sed -n 's/.*memvisor-guest: //p' "$console" 2>/dev/null)
    kill -0 "$pid" 2>/dev/null || { echo "linux-demo: memvisor ended:" >&2; cat "$tmp/report.txt" >&2; return 1; }
    (($(date +%s) - start > limit)) && { echo "linux-demo: no '$want' from the guest" >&2; return 1; }
    sleep 1
  done
}
# Sets $total to the guest's MemTotal (kB).
memtotal() {
  echo meminfo >&3
  expect "meminfo " 120
  total=$(awk '{for (i = 1; i < NF; i++) if ($i == "MemTotal:") print $(i + 1)}' <<<"$got")
}
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"; }
actual() {
  "$bin" balloon stats --api-sock "$sock" 2>/dev/null | sed -n 's/.*"actual_mib": *\([0-9]*\).*/\1/p'
}
wait_actual() {
  local want=$1 start
  start=$(date +%s)
  until [[ "$(actual)" == "$want" ]]; do
    (($(date +%s) - start > 600)) && { echo "linux-demo: the balloon did not reach $want MiB" >&2; return 1; }
    sleep 1
  done
}

echo "linux-demo: booting $dir/vmlinux (console: $console)"
expect ready 900
echo "linux-demo: guest /init ready after $(elapsed)"
memtotal
total0=$total
rss0=$(rss)
echo "before:   guest MemTotal $total0 kB, memvisor resident $rss0 kB"
t1=$(date +%s)
"$bin" balloon set "${mib}M" --api-sock "$sock" >/dev/null
wait_actual "$mib"
memtotal
total1=$total
rss1=$(rss)
echo "inflated: guest MemTotal $total1 kB, memvisor resident $rss1 kB ($mib MiB in $(($(date +%s) - t1)) s)"
"$bin" balloon set 0M --api-sock "$sock" >/dev/null
wait_actual 0
memtotal
total2=$total
rss2=$(rss)
echo "deflated: guest MemTotal $total2 kB, memvisor resident $rss2 kB (total $(elapsed))"
echo poweroff >&3

ok=1
(( total0 - total1 == mib * 1024 )) || { echo "linux-demo: MemTotal moved by $((total0 - total1)) kB, not $((mib * 1024))" >&2; ok=0; }
(( rss0 - rss1 >= mib * 1024 * 7 / 8 )) || { echo "linux-demo: resident memory moved by $((rss0 - rss1)) kB only" >&2; ok=0; }
(( total2 == total0 )) || { echo "linux-demo: MemTotal not restored ($total2 kB)" >&2; ok=0; }
((ok)) && echo "linux-demo: ok" || exit 1

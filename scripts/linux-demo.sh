#!/usr/bin/env bash
# Boots memvisor's Linux test guest (scripts/guest-assets.sh builds it) with a virtio balloon and
# the control API, inflates the balloon through the API, prints the guest's MemTotal (asked of
# the guest over its serial console) and the VMM's resident memory before and after, deflates,
# and exits 0 only when both moved as expected (MemTotal down by the balloon size and back; the
# host's residency down by about that much).
#
#
# --disk: also gives the guest a 16 MiB ext4 image (mkfs.ext4, Debian's e2fsprogs) as /dev/vda;
#         the guest mounts it, writes a file with a fresh token, syncs and unmounts; after the
#         run the host reads the file back from the image (debugfs, no mount) and compares.
# --net:  also gives the guest a tap (`--net tap=NAME`) inside a network namespace of the
#         demo's own (deleted at the end) whose host side is 10.99.0.1/24; the guest sets up
#         eth0 as 10.99.0.2/24 and pings the host side. Needs root and iproute2.
# Exit 0 only when everything asked for happened; what was seen is printed.
#
# Usage: scripts/linux-demo.sh [--disk] [--net] [MIB]
#        (MIB default 32; inflating runs at ~0.8 MiB/s where KVM emulates guest ring 0, booting
#        takes ~3-4 min there)
# Environment: MEMVISOR (the binary; default: the release or debug build under
# target/x86_64-unknown-linux-gnu/, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
disk=0 net=0 mib=32
for a in "$@"; do
  case "$a" in
    --disk) disk=1 ;;
    --net) net=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    [0-9]*) mib=$a ;;
    *) echo "linux-demo: unknown argument $a (use --disk, --net, MIB)" >&2; exit 2 ;;
  esac
done

bin=${MEMVISOR:-}
if [[ -z "$bin" ]]; then
  out=${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu
  for b in "$out/release/memvisor" "$out/debug/memvisor"; do
    [[ -x "$b" ]] && { bin=$b; break; }
  done
fi
if [[ -z "$bin" ]]; then
  echo "linux-demo: building memvisor (cargo build --release)"
  cargo build --release -q
  bin=${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/memvisor
fi
if ! dir=$(scripts/guest-assets.sh --test-dir 2>/dev/null); then
  echo "linux-demo: building the test kernel first (scripts/guest-assets.sh, ~5 min once)"
  MEMVISOR_TEST_KERNEL=1 scripts/guest-assets.sh >/dev/null
  dir=$(scripts/guest-assets.sh --test-dir)
fi

tmp=$(mktemp -d)
pid=
ns=
# Keeps the script's own exit status: under `set -e` the status of waiting for the killed VMM
# (130/143) would otherwise become it, and a successful demo exited 130.
cleanup() {
  local rc=$?
  if [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; then wait "$pid" 2>/dev/null || true; fi
  [[ -n "$ns" ]] && ip netns del "$ns" 2>/dev/null
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
extra=()
launch=()
if ((disk)); then
  command -v mkfs.ext4 >/dev/null && command -v debugfs >/dev/null ||
    { echo "linux-demo: --disk needs mkfs.ext4 and debugfs (apt-get install e2fsprogs)" >&2; exit 1; }
  mkfs.ext4 -q -F -L memvisor-demo "$tmp/disk.img" 16M >/dev/null
  extra+=(--disk "path=$tmp/disk.img")
  echo "linux-demo: disk: a 16 MiB ext4 image, $tmp/disk.img"
fi
if ((net)); then
  [[ $(id -u) == 0 ]] && command -v ip >/dev/null ||
    { echo "linux-demo: --net needs root and iproute2 (a network namespace and a tap)" >&2; exit 1; }
  ns=memvisor-demo-$$
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" tuntap add mvdemo0 mode tap
  ip -n "$ns" addr add 10.99.0.1/24 dev mvdemo0
  ip -n "$ns" link set mvdemo0 up
  extra+=(--net tap=mvdemo0)
  launch=(ip netns exec "$ns")
  echo "linux-demo: net: tap mvdemo0 in namespace $ns, host side 10.99.0.1/24"
fi
mkfifo "$tmp/in"
console=$tmp/console.txt
sock=$tmp/api.sock
t0=$(date +%s)
"${launch[@]}" "$bin" run --kernel "$dir/vmlinux" --initrd "$dir/initramfs.cpio" \
  --cmdline "console=ttyS0 reboot=k panic=1 printk.devkmsg=on" \
  --vcpus 1 -m size=256M,prealloc=on --balloon amount_mib=0,stats_polling_interval_s=1 \
  "${extra[@]}" --api-sock "$sock" --console "$console" --timeout 1200 <"$tmp/in" >"$tmp/report.txt" 2>&1 &
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
      line=${line%$'\r'}
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
# Sends `run COMMAND` and sets $status to its exit status.
run() {
  echo "run $1" >&3
  expect "ran " "${2:-600}"
  status=${got#ran }
}
disk_ok=1 net_ok=1
if ((disk)); then
  token=memvisor-demo-$RANDOM$RANDOM
  t1=$(date +%s)
  run "mkdir -p /mnt/disk && mount -t ext4 /dev/vda /mnt/disk && echo $token > /mnt/disk/hello.txt && sync && umount /mnt/disk"
  echo "disk:     guest mounted /dev/vda (ext4), wrote /hello.txt, synced, unmounted: status $status ($(($(date +%s) - t1)) s)"
  [[ "$status" == 0 ]] || disk_ok=0
fi
if ((net)); then
  t1=$(date +%s)
  # One echo: ping's pause between echoes is a guest timer, slow where KVM emulates ring 0.
  run "ip addr add 10.99.0.2/24 dev eth0 && ip link set eth0 up && ping -c 1 -W 60 10.99.0.1"
  echo "net:      guest eth0 10.99.0.2 pinged the host side 10.99.0.1: status $status ($(($(date +%s) - t1)) s)"
  [[ "$status" == 0 ]] || net_ok=0
  "$bin" vm status --api-sock "$sock" 2>/dev/null | grep -o '"tx_frames": *[0-9]*\|"rx_frames": *[0-9]*' | tr '\n' ' ' |
    sed 's/^/net:      device counters: /; s/$/\n/' || true
fi
echo poweroff >&3
if ((disk)); then
  # The image is the VMM's (locked) until it ends.
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  seen_on_host=$(debugfs -R "cat /hello.txt" "$tmp/disk.img" 2>/dev/null || true)
  echo "disk:     the host reads /hello.txt from the image: '$seen_on_host' (expected '$token')"
  [[ "$seen_on_host" == "$token" ]] || disk_ok=0
fi

ok=1
(( total0 - total1 == mib * 1024 )) || { echo "linux-demo: MemTotal moved by $((total0 - total1)) kB, not $((mib * 1024))" >&2; ok=0; }
(( rss0 - rss1 >= mib * 1024 * 7 / 8 )) || { echo "linux-demo: resident memory moved by $((rss0 - rss1)) kB only" >&2; ok=0; }
(( total2 == total0 )) || { echo "linux-demo: MemTotal not restored ($total2 kB)" >&2; ok=0; }
((disk_ok)) || { echo "linux-demo: the disk part failed" >&2; ok=0; }
((net_ok)) || { echo "linux-demo: the network part failed" >&2; ok=0; }
((ok)) && echo "linux-demo: ok" || exit 1

#!/usr/bin/env bash
# Builds the cargo-fuzz (libFuzzer) targets in fuzz/ once and runs each for SECONDS (default 20)
# on a copy of its committed corpus, one target at a time on one core. Exits non-zero on the
# first crash, leak, timeout or out-of-memory; the input that did it is written to
# fuzz/artifacts/<target>/ and reproduced with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (docs/fuzzing.md)
#
# Installs cargo-fuzz from crates.io if it is missing. Uses the nightly toolchain when there is
# one; otherwise the stable one with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z flags), since a
# machine may have only one toolchain and none can be fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(balloon_queues block_requests net_frames api_request config)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz from crates.io"
  cargo install cargo-fuzz --locked
fi
if cargo +nightly --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz)
else
  echo "fuzz: no nightly toolchain; using the stable one with RUSTC_BOOTSTRAP=1"
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi

"${fuzz[@]}" build

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  dict=()
  [[ -f fuzz/dict/$t.dict ]] && dict=(-dict="fuzz/dict/$t.dict")
  log="$work/$t.log"
  # New inputs go to the scratch copy; the committed corpus is only read.
  if ! "${fuzz[@]}" run "$t" "$work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -malloc_limit_mb=1024 "${dict[@]}" >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/"
    exit 1
  fi
  execs=$(awk -F: '/stat::number_of_executed_units/ { gsub(/ /, "", $NF); print $NF }' "$log")
  rate=$(awk -F: '/stat::average_exec_per_sec/ { gsub(/ /, "", $NF); print $NF }' "$log")
  echo "fuzz: $t: ${execs:-?} executions in ${secs}s (${rate:-?}/s), no crash"
done

#!/usr/bin/env bash
# README's first command: install what is missing, build, and run the main job
# (`memvisor run`: the built-in guest, 512 MiB, 1 vCPU, default workload, report).
# Extra arguments go to `memvisor run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --bin memvisor
# .cargo/config.toml names the target (static linking), so the binary is under its triple.
exec "${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/memvisor" run "$@"

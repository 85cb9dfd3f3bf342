#!/usr/bin/env bash
# The whole test suite on a fresh machine: provisions libclang-dev and the Tansu broker, then
# runs every test (unit, oracle/property, RocksDB, HTTP, end to end through a real broker).
# The build goes to $KMFLOW_TARGET_DIR (default ~/.cache/kmflow/target) so reruns are warm.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${KMFLOW_TARGET_DIR:-${HOME}/.cache/kmflow/target}"
export PATH="${HOME}/.cargo/bin:${PATH}"

# Tansu builds in the background while the project compiles.
scripts/provision.sh --tansu-background
cargo build --release --workspace --all-targets
scripts/provision.sh --wait-tansu

cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --workspace --all-targets 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"

#!/usr/bin/env bash
# Runs kmflow on its embedded source (the realistic generator): no Kafka needed.
# State goes to ./kmflow-state, the API and /metrics to http://127.0.0.1:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${KMFLOW_TARGET_DIR:-${HOME}/.cache/kmflow/target}"
scripts/provision.sh --no-tansu
exec cargo run --release --bin kmflow -- run "$@"

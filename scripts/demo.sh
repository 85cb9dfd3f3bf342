#!/usr/bin/env bash
# Runs kmflow on its embedded source (the realistic generator): no Kafka needed.
# State goes to ./kmflow-state, the API and /metrics to http://127.0.0.1:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${KMFLOW_TARGET_DIR:-${HOME}/.cache/kmflow/target}"
scripts/provision.sh --no-tansu
# EVE static data (type -> group -> category) for solo without zkb and ship-group breakdowns,
# when the shared data set sits beside the clone; otherwise those fields say why they are null.
if [ -z "${KMFLOW__STATS__STATIC_DIR:-}" ] && [ -f ../shared/data/static/invGroups.csv ]; then
  export KMFLOW__STATS__STATIC_DIR=../shared/data/static
fi
exec cargo run --release --bin kmflow -- run "$@"

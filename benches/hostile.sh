#!/usr/bin/env bash
# Hostile-client figures (issue 11), measured against a running kmflow:
#   - idle connections held before new ones are refused, and slowloris connections left open;
#   - /healthz p50/p99 while 64 clients read the largest corporation roster;
#   - the cost of the largest killmail accepted (20,000 attackers): decode and contributions.
#
#   benches/hostile.sh            # N=200000 generated killmails first (full statistics)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${KMFLOW_TARGET_DIR:-${HOME}/.cache/kmflow/target}"
N="${N:-200000}"
cargo build --release -q --bin kmflow
cargo build --release -q -p kmflow-dataflows --example attackers
WORK=$(mktemp -d)
cleanup() { kill "${KPID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
API="http://127.0.0.1:$PORT"
KMFLOW__SOURCE__KIND=generator KMFLOW__GENERATOR__COUNT=$((N / 4)) KMFLOW__GENERATOR__RATE_PER_SEC=0 \
KMFLOW__STATS__STATIC_DIR="$(cd .. && pwd)/shared/data/static" KMFLOW__STATE__DIR="$WORK/state" \
KMFLOW__API__LISTEN="127.0.0.1:$PORT" KMFLOW_LOG=warn \
  "$CARGO_TARGET_DIR/release/kmflow" run >/dev/null 2>"$WORK/log" &
KPID=$!
until curl -sf "$API/readyz" >/dev/null 2>&1; do sleep 0.1; done
committed() { curl -s -X POST "$API/v1/characters:batch" -d '{"ids":[]}' |
  python3 -c 'import json,sys; a=json.load(sys.stdin).get("as_of") or {}; print(sum(v for p in (a.get("offsets") or {}).values() for v in p.values()))'; }
while [ "$(committed)" -lt "$N" ]; do sleep 1; done
CORP=$(curl -s "$API/v1/leaderboards/corporations?by=kills&limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["entries"][0]["id"])')
MEMBERS=$(curl -s "$API/v1/corporations/$CORP/members?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["active_members"])')
echo "kmflow hostile clients: $N generated killmails, corporation $CORP with $MEMBERS members, $(nproc) cores"
python3 benches/hostile.py --api "$API" --corp "$CORP" --clients 64 --seconds 20 | sed 's/^/  /'
echo "  largest killmail: $("$CARGO_TARGET_DIR/release/examples/attackers")"

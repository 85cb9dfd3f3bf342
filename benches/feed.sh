#!/usr/bin/env bash
# The live feed's latency: produce -> `killmail` event on GET /v1/stream, against the polling a
# client does today (produce -> visible in the API, GET /v1/killmails/{id} until 200), run side
# by side on the same kmflow, broker and trickle of generated killmails.
#
#   benches/feed.sh                     # 50 killmails/s for 20 s, each way
#   RATE=200 SECONDS_EACH=30 benches/feed.sh
#
# kmflow runs against a real Kafka-protocol broker (Tansu) with its default configuration
# (2 workers, full statistics); examples/freshness.rs produces with rdkafka (one record per
# batch, acks=all) and times each killmail from the moment it is handed to the producer.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${KMFLOW_TARGET_DIR:-${HOME}/.cache/kmflow/target}"
export PATH="${HOME}/.cargo/bin:${PATH}"
RATE="${RATE:-50}"
SECONDS_EACH="${SECONDS_EACH:-20}"
scripts/provision.sh --no-tansu >/dev/null
scripts/provision.sh --wait-tansu
cargo build --release -q --bin kmflow --example freshness
BIN="${CARGO_TARGET_DIR}/release"
WORK=$(mktemp -d /tmp/kmflow-feed.XXXXXX)
cleanup() {
  kill "${KPID:-}" "${BPID:-}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
. benches/lib.sh

BPORT=$(free_port)
tansu broker --listener-url "tcp://127.0.0.1:$BPORT" --advertised-listener-url "tcp://127.0.0.1:$BPORT" \
  --storage-engine memory://tansu/ >"$WORK/broker.log" 2>&1 &
BPID=$!
until (exec 3<>/dev/tcp/127.0.0.1/$BPORT) 2>/dev/null; do sleep 0.1; done
tansu topic create live --partitions 4 --broker "tcp://127.0.0.1:$BPORT" >/dev/null 2>&1
APORT=$(free_port)
API="http://127.0.0.1:$APORT"
KMFLOW__SOURCE__KIND=kafka KMFLOW__KAFKA__BROKERS="127.0.0.1:$BPORT" KMFLOW__KAFKA__LIVE_TOPIC=live \
  KMFLOW__STATE__DIR="$WORK/state" KMFLOW__API__LISTEN="127.0.0.1:$APORT" KMFLOW_LOG=warn \
  "$BIN/kmflow" run >"$WORK/kmflow.log" 2>&1 &
KPID=$!
until curl -sf "$API/readyz" >/dev/null; do sleep 0.05; done

run() { # $1: extra flag, $2: first id
  "$BIN/examples/freshness" --brokers "127.0.0.1:$BPORT" --topic live --api "$API" \
    --rate "$RATE" --seconds "$SECONDS_EACH" --first-id "$2" $1
}
echo "feed: $RATE killmails/s for ${SECONDS_EACH} s each way, 2 cores, default configuration" >&2
POLL=$(run "" 900000000000)
STREAM=$(run --stream 910000000000)
echo "$POLL"
echo "$STREAM"
python3 - "$POLL" "$STREAM" <<'PY'
import re, sys
def p(line, q):
    return float(re.search(q + r" (\d+) ms", line).group(1))
poll, stream = sys.argv[1], sys.argv[2]
for q in ("p50", "p99"):
    a, b = p(poll, q), p(stream, q)
    print(f"feed {q}: event {b:.0f} ms vs polling the API {a:.0f} ms ({b / a:.2f}x)" if a else f"feed {q}: {b:.0f} ms")
PY

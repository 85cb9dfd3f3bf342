#!/usr/bin/env bash
# End-to-end benchmark through a real Kafka-protocol broker (Tansu), kmflow as a process.
#
#   benches/e2e.sh                 # the real killmails in ../shared/data/killmails
#   N=1000000 benches/e2e.sh       # N generated killmails instead
#   KMFLOW__STATS__LEVEL=all-time benches/e2e.sh   # all-time statistics only (the cost of the rest)
#
# Measures: ingest rate from the first produce to the last commit (killmails/s), peak RSS of
# kmflow, character-lookup latency (p50/p99, wrk with random known ids) idle, and restart-to-
# ready time. Prints one table. Provisions tansu and wrk if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${KMFLOW_TARGET_DIR:-${HOME}/.cache/kmflow/target}"
export PATH="${HOME}/.cargo/bin:${PATH}"
scripts/provision.sh
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --bin kmflow -q
KMFLOW="${CARGO_TARGET_DIR}/release/kmflow"
WORK=$(mktemp -d)
PARTITIONS=4
WORKERS="${WORKERS:-2}"
cleanup() { kill "${KPID:-}" "${BPID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BPORT=$(free_port); APORT=$(free_port)
tansu broker --listener-url "tcp://127.0.0.1:$BPORT" --advertised-listener-url "tcp://127.0.0.1:$BPORT" >"$WORK/broker.log" 2>&1 &
BPID=$!
until (exec 3<>/dev/tcp/127.0.0.1/$BPORT) 2>/dev/null; do sleep 0.1; done
tansu topic create killmails --partitions $PARTITIONS --broker "tcp://127.0.0.1:$BPORT" >/dev/null 2>&1

start_kmflow() {
  KMFLOW__SOURCE__KIND=kafka KMFLOW__KAFKA__BROKERS="127.0.0.1:$BPORT" KMFLOW__KAFKA__LIVE_TOPIC=killmails \
  KMFLOW__PIPELINE__WORKERS=$WORKERS KMFLOW__STATE__DIR="$WORK/state" KMFLOW__API__LISTEN="127.0.0.1:$APORT" \
  KMFLOW__STATS__STATIC_DIR="${STATIC_DIR:-../shared/data/static}" \
  KMFLOW_LOG=warn "$KMFLOW" run >"$WORK/kmflow.log" 2>&1 &
  KPID=$!
}
committed() {
  curl -s -X POST "http://127.0.0.1:$APORT/v1/characters:batch" -d '{"ids":[]}' |
    python3 -c 'import json,sys; d=json.load(sys.stdin); a=d.get("as_of") or {}; print(sum((a.get("offsets") or {}).get("killmails",{}).values()))' 2>/dev/null || echo 0
}

start_kmflow
until curl -sf "http://127.0.0.1:$APORT/readyz" >/dev/null; do sleep 0.1; done
T0=$(date +%s.%N)
if [ -n "${N:-}" ]; then
  "$KMFLOW" gen --count "$N" --topic killmails --brokers "127.0.0.1:$BPORT" 2>"$WORK/import.log"
  TOTAL=$N
else
  "$KMFLOW" import ../shared/data/killmails --topic killmails --brokers "127.0.0.1:$BPORT" >"$WORK/import.log"
  TOTAL=$(sed -n 's/^kmflow import: \([0-9]*\) killmails.*/\1/p' "$WORK/import.log")
fi
T_PRODUCED=$(date +%s.%N)
while [ "$(committed)" -lt "$TOTAL" ]; do sleep 0.05; done
T1=$(date +%s.%N)
RSS_KB=$(awk '/VmHWM/ {print $2}' /proc/$KPID/status)

# Lookup latency: random character ids known to be in the state (from the same input).
if [ -n "${N:-}" ]; then
  "$KMFLOW" gen --count 2000 >"$WORK/sample.jsonl"
else
  cp ../shared/data/killmails/everef-jsonl/*.jsonl "$WORK/sample.jsonl"
fi
python3 - "$WORK/sample.jsonl" "$WORK/ids.lua" <<'PY'
import json, sys
ids = set()
for line in open(sys.argv[1]):
    k = json.loads(line)
    for a in k["attackers"]:
        if a.get("character_id", 0) >= 4000000:
            ids.add(a["character_id"])
ids = sorted(ids)[:2000]
with open(sys.argv[2], "w") as f:
    f.write("ids = {" + ",".join(map(str, ids)) + "}\n")
    f.write("math.randomseed(1)\n")
    f.write('request = function() return wrk.format("GET", "/v1/characters/" .. ids[math.random(#ids)]) end\n')
PY
wrk -t1 -c8 -d10s --latency -s "$WORK/ids.lua" "http://127.0.0.1:$APORT" >"$WORK/wrk.txt"
P50=$(awk '/^ +50%/ {print $2}' "$WORK/wrk.txt")
P99=$(awk '/^ +99%/ {print $2}' "$WORK/wrk.txt")
RPS=$(awk '/^Requests\/sec/ {print $2}' "$WORK/wrk.txt")
NON2XX=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk.txt")

# Restart to ready.
kill -TERM $KPID; wait $KPID || true
R0=$(date +%s.%N)
start_kmflow
until curl -sf "http://127.0.0.1:$APORT/readyz" >/dev/null; do sleep 0.01; done
R1=$(date +%s.%N)
STATE_MB=$(du -sm "$WORK/state" | cut -f1)

# Replay: the topic is full; a fresh state catches up from offset 0 (backfill).
kill -TERM $KPID; wait $KPID || true
rm -rf "$WORK/state"
P0=$(date +%s.%N)
start_kmflow
until curl -sf "http://127.0.0.1:$APORT/readyz" >/dev/null; do sleep 0.01; done
while [ "$(committed)" -lt "$TOTAL" ]; do sleep 0.05; done
P1=$(date +%s.%N)
REPLAY_RSS_KB=$(awk '/VmHWM/ {print $2}' /proc/$KPID/status)

python3 - <<PY
total=$TOTAL; t0=$T0; tp=$T_PRODUCED; t1=$T1
rows = [
  ("killmails", f"{total:,}"),
  ("produce (import) time", f"{tp-t0:.1f} s"),
  ("first produce to last commit", f"{t1-t0:.1f} s"),
  ("end-to-end rate", f"{total/(t1-t0):,.0f} killmails/s"),
  ("peak RSS (VmHWM)", f"{$RSS_KB/1024:.0f} MiB"),
  ("state on disk", f"$STATE_MB MiB"),
  ("character lookup p50 / p99 (idle, wrk -c8)", "$P50 / $P99"),
  ("lookup throughput", f"{float('$RPS'):,.0f} req/s" + (" (non-2xx: $NON2XX)" if "$NON2XX" else "")),
  ("restart to ready", f"{$R1-$R0:.2f} s"),
  ("replay of the full topic, fresh state", f"{$P1-$P0:.1f} s = {total/($P1-$P0):,.0f} killmails/s"),
  ("peak RSS during replay", f"{$REPLAY_RSS_KB/1024:.0f} MiB"),
]
w = max(len(r[0]) for r in rows)
print(f"kmflow end-to-end ($WORKERS workers, $PARTITIONS partitions, stats level ${KMFLOW__STATS__LEVEL:-full})")
for k, v in rows: print(f"  {k:<{w}}  {v}")
PY

#!/usr/bin/env bash
# Restart time and memory against the length of history.
#
#   benches/restart.sh 1000000 5000000
#
# For each N: kmflow ingests N generated killmails (the built-in source, unthrottled) into a
# fresh state, then is stopped cleanly and restarted, then killed with SIGKILL and restarted.
# Prints: ingest time and rate, peak RSS while ingesting, state size, restart-to-ready after
# the clean stop and after the crash, and RSS right after restart. Restart-to-ready is the time
# from starting the process until /readyz answers 200 (state opened, last commit read).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${KMFLOW_TARGET_DIR:-${HOME}/.cache/kmflow/target}"
cargo build --release --bin kmflow -q
KMFLOW="${CARGO_TARGET_DIR}/release/kmflow"
WORK=$(mktemp -d)
cleanup() { kill "${KPID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

start() { # $1 = killmails per partition
  KMFLOW__SOURCE__KIND=generator KMFLOW__GENERATOR__COUNT="$1" KMFLOW__GENERATOR__RATE_PER_SEC=0 \
  KMFLOW__STATE__DIR="$WORK/state" KMFLOW__API__LISTEN="127.0.0.1:$PORT" KMFLOW_LOG=warn \
  "$KMFLOW" run >/dev/null 2>"$WORK/log" &
  KPID=$!
}
ready_after() { local t0=$1; until curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do sleep 0.005; done
  python3 -c "import time; print(f'{time.time()-$t0:.2f}')"; }
committed() { curl -s -X POST "http://127.0.0.1:$PORT/v1/characters:batch" -d '{"ids":[]}' 2>/dev/null |
  python3 -c 'import json,sys; d=json.load(sys.stdin); a=d.get("as_of") or {}; print(sum((a.get("offsets") or {}).get("generator",{}).values()))' 2>/dev/null || echo 0; }
rss() { awk '/VmRSS/ {printf "%.0f", $2/1024}' /proc/$KPID/status; }
hwm() { awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/$KPID/status; }

printf "%-10s %-22s %-12s %-9s %-22s %-22s %-12s\n" N "ingest" "peak RSS" "state" "restart (clean stop)" "restart (SIGKILL)" "RSS after"
for N in "${@:-1000000}"; do
  rm -rf "$WORK/state"
  T0=$(python3 -c 'import time; print(time.time())')
  start $((N / 4))
  until curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do sleep 0.01; done
  while [ "$(committed)" -lt "$N" ]; do sleep 0.2; done
  T1=$(python3 -c 'import time; print(time.time())')
  PEAK=$(hwm)
  kill -TERM $KPID; wait $KPID || true
  STATE=$(du -sm "$WORK/state" | cut -f1)
  R0=$(python3 -c 'import time; print(time.time())'); start $((N / 4)); CLEAN=$(ready_after "$R0")
  sleep 1; kill -KILL $KPID; wait $KPID 2>/dev/null || true
  R0=$(python3 -c 'import time; print(time.time())'); start $((N / 4)); CRASH=$(ready_after "$R0")
  sleep 2; AFTER=$(rss)
  kill -TERM $KPID; wait $KPID || true
  python3 - <<PY
n=$N; t=$T1-$T0
print(f"{n:<10,} {t:6.1f} s ({n/t:7,.0f}/s)  {'$PEAK'+' MiB':<12} {'$STATE'+' MiB':<9} {'$CLEAN'+' s':<22} {'$CRASH'+' s':<22} {'$AFTER'+' MiB':<12}")
PY
done

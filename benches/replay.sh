#!/usr/bin/env bash
# Replay at full statistics, kmflow against a baseline build, side by side in one run.
#
#   N=1000000 benches/replay.sh            # 1M generated killmails, workers 1 and 2
#   BASELINE_REF=bd9c3de N=300000 benches/replay.sh
#
# For each binary (the baseline, built from BASELINE_REF and cached under
# ~/.cache/kmflow/baseline, then this checkout) and each worker count in WORKERS (default
# "1 2"): `kmflow run` on its built-in generator (no broker), unthrottled, N killmails over 4
# partitions, full statistics, static data from ../shared, into a fresh state. Prints the time
# until every killmail is committed, the rate, the peak RSS, the state size, then restart to
# ready after a clean stop. Also runs the full-statistics floor on the same killmails
# (`dataflows/examples/floor_full.rs`: a single-threaded in-memory hash-map fold of every
# statistic kmflow serves). SKIP_FLOOR=1 leaves the floor out (at 10M its in-memory map
# needs more memory than a 24 GiB machine has). KMFLOW_BIN=path runs that binary instead of
# building this checkout: give it a copy, so a rebuild during a long run cannot replace it.
# After each row, the RSS and the rate at every tenth of the replay show whether memory is
# flat and how the rate changes as history grows.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${KMFLOW_TARGET_DIR:-${HOME}/.cache/kmflow/target}"
N="${N:-1000000}"
WORKERS="${WORKERS:-1 2}"
BASELINE_REF="${BASELINE_REF:-bd9c3de}"
STATIC="$(cd .. && pwd)/shared/data/static"

. benches/lib.sh
baseline_binary "$BASELINE_REF"
BASE_SHA=$(git rev-parse --short "$BASELINE_REF")
if [ -z "${KMFLOW_BIN:-}" ]; then cargo build --release --bin kmflow -q; fi
[ -n "${SKIP_FLOOR:-}" ] || cargo build --release -p kmflow-dataflows --example floor_full -q
CURRENT="${KMFLOW_BIN:-${CARGO_TARGET_DIR}/release/kmflow}"
FLOOR="${CARGO_TARGET_DIR}/release/examples/floor_full"

WORK=$(mktemp -d)
cleanup() { kill "${KPID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
now() { python3 -c 'import time; print(time.time())'; }

start() { # $1 binary, $2 workers
  KMFLOW__SOURCE__KIND=generator KMFLOW__GENERATOR__COUNT=$((N / 4)) KMFLOW__GENERATOR__RATE_PER_SEC=0 \
  KMFLOW__PIPELINE__WORKERS="$2" KMFLOW__STATS__STATIC_DIR="$STATIC" \
  KMFLOW__STATE__DIR="$WORK/state" KMFLOW__API__LISTEN="127.0.0.1:$PORT" KMFLOW_LOG=warn \
  "$1" run >/dev/null 2>"$WORK/log" &
  KPID=$!
}
committed() { curl -s -X POST "http://127.0.0.1:$PORT/v1/characters:batch" -d '{"ids":[]}' 2>/dev/null |
  python3 -c 'import json,sys; d=json.load(sys.stdin); a=d.get("as_of") or {}; print(sum((a.get("offsets") or {}).get("generator",{}).values()))' 2>/dev/null || echo 0; }
hwm() { awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/$KPID/status; }
rss() { awk '/VmRSS/ {printf "%.0f", $2/1024}' /proc/$KPID/status; }

FLOOR_RATE=0
if [ -z "${SKIP_FLOOR:-}" ]; then
  echo "replay: floor (full statistics, 1 thread) on $N generated killmails" >&2
  FLOOR_RATE=$("$FLOOR" --generate "$N" --static-dir "$STATIC" | awk '/killmails\/s/ {print $1}')
fi

printf "kmflow replay, full statistics, %'d generated killmails, 4 partitions, %s cores\n" "$N" "$(nproc)"
printf "  %-34s %-8s %-24s %-12s %-10s %-14s %s\n" binary workers "replay" "peak RSS" state "restart" "of the floor"
[ "$FLOOR_RATE" != 0 ] && printf "  %-34s %-8s %-24s\n" "floor (in-memory fold)" 1 "$(printf "%'d/s" "$FLOOR_RATE")"
BINS=("$BASELINE" "$CURRENT")
[ -n "${SKIP_BASELINE:-}" ] && BINS=("$CURRENT")
for BIN in "${BINS[@]}"; do
  for W in $WORKERS; do
    rm -rf "$WORK/state"
    T0=$(now); start "$BIN" "$W"
    until curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do sleep 0.01; done
    TRACE=""; NEXT=1
    while :; do
      C=$(committed)
      while [ "$NEXT" -le 10 ] && [ "$C" -ge $((N * NEXT / 10)) ]; do
        TRACE="$TRACE $((NEXT * 10))%:$(now):$(rss)"; NEXT=$((NEXT + 1))
        echo "replay: $(basename "$BIN") W=$W $TRACE" >&2
      done
      [ "$C" -ge "$N" ] && break
      kill -0 $KPID 2>/dev/null || { echo "replay: kmflow exited; log:" >&2; tail "$WORK/log" >&2; exit 1; }
      sleep 0.2
    done
    T1=$(now); PEAK=$(hwm)
    kill -TERM $KPID; wait $KPID || true
    STATE=$(du -sm "$WORK/state" | cut -f1)
    R0=$(now); start "$BIN" "$W"
    until curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do sleep 0.005; done
    R1=$(now); kill -TERM $KPID; wait $KPID || true
    name=$(basename "$BIN"); [ "$BIN" = "$CURRENT" ] && name="kmflow (this checkout)"
    [ "$BIN" = "$BASELINE" ] && name="baseline ${BASE_SHA}"
    python3 - <<PY
n=$N; t=$T1-$T0; floor=$FLOOR_RATE
ratio = f"{n/t/floor:.2f}x" if floor else "-"
print(f"  {'$name':<34} {$W:<8} {f'{t:.1f} s ({n/t:,.0f}/s)':<24} {'$PEAK MiB':<12} {'$STATE MiB':<10} {f'{$R1-$R0:.2f} s':<14} {ratio}")
prev, parts = $T0, []
for i, p in enumerate("$TRACE".split()):
    pct, at, mib = p.split(":")
    parts.append(f"{pct} {mib} MiB {n / 10 / (float(at) - prev):,.0f}/s")
    prev = float(at)
print("    RSS and rate by tenth: " + "; ".join(parts))
PY
  done
done

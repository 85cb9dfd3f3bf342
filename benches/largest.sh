#!/usr/bin/env bash
# The work kmflow does to commit the largest killmail it accepts (20,000 attackers: distinct
# characters, 2,000 corporations, 200 alliances; 2.2 MB of JSON), measured on the running
# binary against a real Kafka-protocol broker (Tansu), beside a baseline build in the same run.
#
#   benches/largest.sh                     # full statistics, then all-time; 7 killmails each
#   BASELINE_REF=04e8aec COUNT=7 benches/largest.sh
#   PERF=/tmp LEVELS=full benches/largest.sh   # also profiles this checkout (perf record -g)
#   KMFLOW_BIN=/tmp/kmflow-x benches/largest.sh # that binary (or script) instead of this checkout's
#
# For each statistics level and binary (the baseline, built from BASELINE_REF and cached under
# ~/.cache/kmflow/baseline as benches/replay.sh does, then this checkout), alternately: kmflow
# starts on a fresh state, reading a fresh live topic; then COUNT times, one largest killmail
# (new characters, corporations and alliances each time) is produced with `kmflow import`, and
# the script waits until the API shows it committed. "Work" is the CPU time kmflow's own
# threads spent from the first produce until 2 s after the last commit (see cpu_ns), less
# what as long a wait costs when idle (its timers and the script's polling, measured for 3 s
# after a small warm-up killmail), divided by COUNT. RocksDB's background threads (memtable
# flushes, compactions: deferred, and shared by every write) are shown apart; they vary with
# when a flush happens to fall. The work is also split by thread (schedstat, each part less
# its own idle rate): the timely workers (source, decoding, contributions, the shards' plans
# and reads), the checkpointer (the batch and its synced commit), librdkafka's threads, and the
# rest (the API answering the script's polls, threads that exited). The wall time is produce →
# visible in the API, which includes the checkpoint interval. `cargo bench --bench largest`
# splits the same path into its steps.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CARGO_TARGET_DIR="${KMFLOW_TARGET_DIR:-${HOME}/.cache/kmflow/target}"
export PATH="${HOME}/.cargo/bin:${PATH}"
COUNT="${COUNT:-7}"
BASELINE_REF="${BASELINE_REF:-04e8aec}"
LEVELS="${LEVELS:-full all-time}"
scripts/provision.sh
. benches/lib.sh
baseline_binary "$BASELINE_REF"
WORK=$(mktemp -d)
if [ -n "${KMFLOW_BIN:-}" ]; then
  CURRENT="$KMFLOW_BIN"
  # `kmflow import` produces the killmails: the baseline's will do.
  cp "$BASELINE" "$WORK/kmflow"
else
  cargo build --release --bin kmflow -q
  cp "${CARGO_TARGET_DIR}/release/kmflow" "$WORK/kmflow"
  CURRENT="$WORK/kmflow"
fi
cleanup() {
  kill "${KPID:-}" "${BPID:-}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The killmails: copy c has characters 90,000,000 + 100,000·c + i, as gen::largest_killmail.
python3 - "$WORK" "$COUNT" <<'EOF'
import json, sys
work, count = sys.argv[1], int(sys.argv[2])
for c in range(count):
    base = 100_000 * c
    attackers = [{"character_id": 90_000_000 + base + i, "corporation_id": 98_000_000 + base // 10 + i // 10,
                  "alliance_id": 99_000_000 + base // 100 + i // 100, "damage_done": 10,
                  "ship_type_id": 587 + i % 50} for i in range(20_000)]
    attackers[0]["final_blow"] = True
    km = {"killmail_id": 1_000 + c, "killmail_time": "2021-11-27T00:00:00Z", "solar_system_id": 30000142,
          "victim": {"character_id": 95_000_001, "damage_taken": 5, "ship_type_id": 670},
          "attackers": attackers,
          "zkb": {"totalValue": 1e9, "points": 10, "npc": False, "solo": False, "awox": False}}
    with open(f"{work}/km{c}.json", "w") as f:
        json.dump(km, f)
    if c == 0:
        km = dict(km, killmail_id=999, attackers=attackers[:10])
        with open(f"{work}/warm.json", "w") as f:
            json.dump(km, f)
EOF

BPORT=$(free_port)
tansu broker --storage-engine memory://tansu/ --listener-url "tcp://127.0.0.1:$BPORT" \
  --advertised-listener-url "tcp://127.0.0.1:$BPORT" >"$WORK/broker.log" 2>&1 &
BPID=$!
until (exec 3<>/dev/tcp/127.0.0.1/$BPORT) 2>/dev/null; do sleep 0.1; done

APORT=$(free_port)
API="http://127.0.0.1:$APORT"
# CPU time (ns) of kmflow's own threads (workers, checkpointer, Kafka client, API): the
# process's total from /proc/PID/stat (exited threads included; 10 ms ticks) less RocksDB's
# background threads (flushes and compactions, deferred and shared by every write; they live
# as long as the process), which are /proc/PID/task/*/schedstat of the threads named rocksdb*.
rocksdb_ns() {
  for t in /proc/"$KPID"/task/*; do
    case "$(cat "$t/comm" 2>/dev/null)" in
      rocksdb*) cut -d' ' -f1 "$t/schedstat" 2>/dev/null || true ;;
    esac
  done | awk '{s += $1} END {printf "%.0f\n", s}'
}
cpu_ns() { # $1: own | rocksdb
  [ -d /proc/"$KPID" ] || { echo "largest: kmflow exited (see its log)" >&2; cat "$WORK/kmflow.log" >&2; exit 1; }
  local r total
  r=$(rocksdb_ns)
  if [ "$1" = rocksdb ]; then echo "$r"; return; fi
  total=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.0f\n", ($14 + $15) * 1e9 / hz}' /proc/"$KPID"/stat)
  echo $((total - r))
}
# CPU time (ns) of the threads that live through the run, by part: "workers checkpointer
# kafka" (the timely workers: source, decode, contributions, the shards' plans; the
# checkpointer: the batch and the commit; librdkafka's threads), from their schedstat.
parts_ns() {
  for t in /proc/"$KPID"/task/*; do
    printf '%s\t%s\n' "$(cat "$t/comm" 2>/dev/null)" "$(cut -d' ' -f1 "$t/schedstat" 2>/dev/null)"
  done | awk -F'\t' '
    $1 ~ /^timely/ { w += $2 } $1 ~ /^kmflow-checkpoi/ { c += $2 } $1 ~ /^rdk:/ { k += $2 }
    END { printf "%.0f %.0f %.0f\n", w, c, k }'
}
now_ns() { date +%s%N; }
committed() {
  curl -s -X POST "$API/v1/characters:batch" -d '{"ids":[]}' |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(((d.get("as_of") or {}).get("offsets") or {}).get(sys.argv[1],{}).values()))' "$1" 2>/dev/null || echo 0
}

run() { # $1 label, $2 binary, $3 level, $4 run number; prints "label level work_ms... wall_ms..."
  local topic="live-$4" state="$WORK/state-$4"
  tansu topic create "$topic" --partitions 1 --broker "tcp://127.0.0.1:$BPORT" >/dev/null 2>&1
  KMFLOW__SOURCE__KIND=kafka KMFLOW__KAFKA__BROKERS="127.0.0.1:$BPORT" \
  KMFLOW__KAFKA__LIVE_TOPIC="$topic" KMFLOW__KAFKA__HISTORY_TOPICS='[]' \
  KMFLOW__STATS__LEVEL="$3" KMFLOW__STATE__DIR="$state" KMFLOW__API__LISTEN="127.0.0.1:$APORT" \
  KMFLOW__STATS__STATIC_DIR="$ROOT/../shared/data/static" \
  KMFLOW_LOG=warn "$2" run >>"$WORK/kmflow.log" 2>&1 &
  KPID=$!
  until curl -sf "$API/readyz" >/dev/null 2>&1; do sleep 0.05; done
  "$WORK/kmflow" import "$WORK/warm.json" --topic "$topic" --brokers "127.0.0.1:$BPORT" >>"$WORK/import.log" 2>&1
  until [ "$(committed "$topic")" -ge 1 ]; do sleep 0.05; done
  sleep 2
  # Idle: what 3 s of the same polling costs.
  local c0 t0 c1 t1 idle works="" walls=""
  local p0 p1 idle_parts
  c0=$(cpu_ns own); p0=$(parts_ns); t0=$(now_ns)
  for _ in $(seq 60); do committed "$topic" >/dev/null; sleep 0.05; done
  c1=$(cpu_ns own); p1=$(parts_ns); t1=$(now_ns)
  idle=$(python3 -c "print(($c1 - $c0) / ($t1 - $t0))")
  idle_parts=$(python3 -c "import sys; a, b = sys.argv[1].split(), sys.argv[2].split(); print(' '.join(str((int(y) - int(x)) / ($t1 - $t0)) for x, y in zip(a, b)))" "$p0" "$p1")
  local c_start t_start perf_pid=""
  # PERF=dir: profile this checkout's binary over the measured killmails (perf record -g).
  if [ -n "${PERF:-}" ] && [ "$1" = current ]; then
    perf record ${PERF_OPTS:--g -F 999} -p "$KPID" -o "${PERF}/perf-$3.data" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  local r_start r1
  local parts_start parts_end
  c_start=$(cpu_ns own); r_start=$(cpu_ns rocksdb); parts_start=$(parts_ns); t_start=$(now_ns)
  for c in $(seq 0 $((COUNT - 1))); do
    t0=$(now_ns)
    "$WORK/kmflow" import "$WORK/km$c.json" --topic "$topic" --brokers "127.0.0.1:$BPORT" >>"$WORK/import.log" 2>&1
    until [ "$(committed "$topic")" -ge $((c + 2)) ]; do sleep 0.05; done
    t1=$(now_ns)
    walls="$walls $(python3 -c "print(round(($t1 - $t0) / 1e6))")"
  done
  # What a killmail's commit leaves to do afterwards (flushes, the live feed) counts too.
  for _ in $(seq 40); do committed "$topic" >/dev/null; sleep 0.05; done
  c1=$(cpu_ns own); r1=$(cpu_ns rocksdb); parts_end=$(parts_ns); t1=$(now_ns)
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; fi
  works=$(python3 -c "print(round((($c1 - $c_start) - $idle * ($t1 - $t_start)) / 1e6 / $COUNT, 1))")
  works="$works $(python3 -c "print(round(($r1 - $r_start) / 1e6 / $COUNT, 1))")"
  # The same per part (workers, checkpointer, Kafka client), each less its own idle rate.
  works="$works $(python3 -c "
import sys
a, b, idle = (v.split() for v in sys.argv[1:4])
print(' '.join(str(round(((int(y) - int(x)) - float(i) * ($t1 - $t_start)) / 1e6 / $COUNT, 1)) for x, y, i in zip(a, b, idle)))
" "$parts_start" "$parts_end" "$idle_parts")"
  kill -TERM "$KPID"; wait "$KPID" 2>/dev/null || true
  rm -rf "$state"
  echo "$1|$3|$works|$walls"
}

echo "kmflow, the largest killmail (20,000 attackers), $COUNT killmails per row, $(nproc) cores"
RESULTS="$WORK/results"
n=0
for level in $LEVELS; do
  for label in baseline current; do
    bin="$CURRENT"; [ "$label" = baseline ] && bin="$BASELINE"
    n=$((n + 1))
    run "$label" "$bin" "$level" "$n" >>"$RESULTS"
  done
done
python3 - "$RESULTS" "$BASELINE_REF" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("|") for l in open(sys.argv[1])]
print(f"  {'binary':<22} {'statistics':<10} {'work per killmail (ms)':<24} {'+ RocksDB background (ms)':<27} {'produce to visible (ms), median':<30}")
median = {}
parts = []
for label, level, works, walls in rows:
    own, background, workers, checkpointer, kafka = (float(x) for x in works.split())
    t = [float(x) for x in walls.split()]
    median[(label, level)] = own
    name = f"baseline {sys.argv[2]}" if label == "baseline" else "kmflow (this checkout)"
    print(f"  {name:<22} {level:<10} {own:>8.1f}{'':<16} {background:>8.1f}{'':<19} {statistics.median(t):>8.0f}")
    parts.append((name, level, workers, checkpointer, kafka, own - workers - checkpointer - kafka))
print(f"  of the work (ms): {'binary':<22} {'statistics':<10} {'workers':>8} {'checkpointer':>13} {'Kafka client':>13} {'the rest (API, ...)':>20}")
for name, level, w, c, k, rest in parts:
    print(f"                    {name:<22} {level:<10} {w:>8.1f} {c:>13.1f} {k:>13.1f} {rest:>20.1f}")
for level in sorted({l for _, l in median}):
    if ("baseline", level) in median and ("current", level) in median:
        print(f"  {level}: this checkout does {median[('current', level)] / median[('baseline', level)]:.2f}x the baseline's work")
EOF

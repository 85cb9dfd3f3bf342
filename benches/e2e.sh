#!/usr/bin/env bash
# End-to-end benchmark: kmflow as a process against a real Kafka-protocol broker (Tansu), with
# its two baselines run on the same killmails in the same run, and one table at the end.
#
#   benches/e2e.sh                       # 1,000,000 generated killmails (3 GB of JSON; with
#                                        # full statistics the replay alone takes over 30 min
#                                        # on 2 cores, see README)
#   N=300000 benches/e2e.sh              # the size the README's latest table was measured at
#   N=10000000 benches/e2e.sh            # ten million: ~31 GB of JSON, held in memory by the
#                                        # broker (Tansu's memory storage): needs > 40 GB RAM
#   N=100000 SKIP_POSTGRES=1 benches/e2e.sh   # a quick look, without the PostgreSQL baseline
#   KMFLOW__STATS__LEVEL=all-time benches/e2e.sh   # all-time statistics only
#
# Steps:
#  1. `kmflow gen` writes N killmails (seed 1) to a JSON Lines file.
#  2. The floor: a single-threaded in-memory fold of that file into the same all-time
#     statistics (dataflows/examples/floor.rs); it also picks the sample of the answer check.
#  3. `kmflow import` loads the file into a 4-partition history topic.
#  4. kmflow starts on an empty state and replays the topic: rate until every killmail is
#     committed, peak RSS, epoch commit latency (from its /metrics).
#  5. Lookups idle, from wrk (8 connections): character, corporation, batch of 100 characters.
#  6. Freshness: a live trickle of new killmails (examples/freshness.rs), produce → visible.
#  7. Restart to ready, on the full state.
#  8. Lookups during a replay: a second kmflow replays the topic into a fresh state while wrk
#     runs the same lookups against it.
#  9. The incumbent: PostgreSQL loads the same file into tables, refreshes the materialized
#     views, answers the same lookups (benches/postgres/).
# 10. The answer check: the sample's statistics from the floor, kmflow and PostgreSQL must be
#     equal, field by field; the script fails if they are not.
# Provisions tansu, wrk and PostgreSQL if missing (scripts/provision.sh --bench).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CARGO_TARGET_DIR="${KMFLOW_TARGET_DIR:-${HOME}/.cache/kmflow/target}"
export PATH="${HOME}/.cargo/bin:${PATH}"
N="${N:-1000000}"
PARTITIONS=4
WORKERS="${WORKERS:-2}"
LEVEL="${KMFLOW__STATS__LEVEL:-full}"
scripts/provision.sh --bench
cargo build --release -q --bin kmflow --example freshness
cargo build --release -q -p kmflow-dataflows --example floor
BIN="${CARGO_TARGET_DIR}/release"
KMFLOW="$BIN/kmflow"
WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/kmflow-bench.XXXXXX")
chmod 755 "$WORK"
cleanup() {
  kill "${KPID:-}" "${BPID:-}" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
RES="$WORK/results"
: >"$RES"
put() { echo "$1=$2" >>"$RES"; }
now() { date +%s.%N; }
say() { echo "e2e: $*" >&2; }
. benches/lib.sh

# 1. The killmails.
say "generating $N killmails"
G0=$(now)
"$KMFLOW" gen --count "$N" --out "$WORK/killmails.jsonl" 2>/dev/null
put gen_s "$(python3 -c "print($(now)-$G0)")"
put file_mb "$(($(stat -c %s "$WORK/killmails.jsonl") / 1048576))"
HISTORY_END=$(tail -n 1 "$WORK/killmails.jsonl" | python3 -c '
import datetime, json, sys
t = json.load(sys.stdin)["killmail_time"].replace("Z", "+00:00")
print(int(datetime.datetime.fromisoformat(t).timestamp()) + 86400)')

# 2. The floor.
say "floor"
"$BIN/examples/floor" "$WORK/killmails.jsonl" --sample "$WORK/floor-sample.jsonl" | tee "$WORK/floor.txt" >&2
put floor_rate "$(sed -n 's/.* = \([0-9]*\) killmails\/s.*/\1/p' "$WORK/floor.txt")"
python3 -c "
import json
for l in open('$WORK/floor-sample.jsonl'):
    r = json.loads(l); print(r['kind'] + '\t' + str(r['id']))" >"$WORK/sample-ids.tsv"
# The lookup ids: the first 2,000 characters and corporations of the file.
mkdir -p "$WORK/ids"
head -n 50000 "$WORK/killmails.jsonl" | python3 -c "
import json, sys
seen = {'character_id': {}, 'corporation_id': {}}
for line in sys.stdin:
    k = json.loads(line)
    for p in k['attackers'] + [k['victim']]:
        for f, s in seen.items():
            if p.get(f) and len(s) < 2000: s.setdefault(p[f], None)
open('$WORK/ids/characters.txt', 'w').write('\n'.join(map(str, seen['character_id'])) + '\n')
open('$WORK/ids/corporations.txt', 'w').write('\n'.join(map(str, seen['corporation_id'])) + '\n')"

# 3. The broker and the history topic.
BPORT=$(free_port)
tansu broker --listener-url "tcp://127.0.0.1:$BPORT" --advertised-listener-url "tcp://127.0.0.1:$BPORT" >"$WORK/broker.log" 2>&1 &
BPID=$!
until (exec 3<>/dev/tcp/127.0.0.1/$BPORT) 2>/dev/null; do sleep 0.1; done
tansu topic create history --partitions $PARTITIONS --broker "tcp://127.0.0.1:$BPORT" >/dev/null 2>&1
tansu topic create live --partitions $PARTITIONS --broker "tcp://127.0.0.1:$BPORT" >/dev/null 2>&1
say "producing to the history topic"
I0=$(now)
"$KMFLOW" import "$WORK/killmails.jsonl" --topic history --brokers "127.0.0.1:$BPORT" >"$WORK/import.log" 2>&1
put import_s "$(python3 -c "print($(now)-$I0)")"

APORT=$(free_port)
API="http://127.0.0.1:$APORT"
start_kmflow() { # $1: state dir
  KMFLOW__SOURCE__KIND=kafka KMFLOW__KAFKA__BROKERS="127.0.0.1:$BPORT" \
  KMFLOW__KAFKA__LIVE_TOPIC=live KMFLOW__KAFKA__HISTORY_TOPICS='["history"]' \
  KMFLOW__PIPELINE__WORKERS=$WORKERS KMFLOW__STATE__DIR="$1" KMFLOW__API__LISTEN="127.0.0.1:$APORT" \
  KMFLOW__STATS__STATIC_DIR="${STATIC_DIR:-$ROOT/../shared/data/static}" \
  KMFLOW_LOG=warn "$KMFLOW" run >>"$WORK/kmflow.log" 2>&1 &
  KPID=$!
}
stop_kmflow() { kill -TERM "$KPID"; wait "$KPID" || true; }
wait_ready() { until curl -sf "$API/readyz" >/dev/null; do sleep 0.01; done; }
committed() {
  curl -s -X POST "$API/v1/characters:batch" -d '{"ids":[]}' |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(((d.get("as_of") or {}).get("offsets") or {}).get("history",{}).values()))' 2>/dev/null || echo 0
}
wait_committed() { while [ "$(committed)" -lt "$N" ]; do sleep 0.05; done; }

# wrk scripts: random known ids; batches of 100 consecutive ids of the list.
lua_ids() { echo "ids = {$(paste -sd, "$WORK/ids/$1.txt")}"; echo 'math.randomseed(1)'; }
{ lua_ids characters; echo 'request = function() return wrk.format("GET", "/v1/characters/" .. ids[math.random(#ids)]) end'; } >"$WORK/character.lua"
{ lua_ids corporations; echo 'request = function() return wrk.format("GET", "/v1/corporations/" .. ids[math.random(#ids)]) end'; } >"$WORK/corporation.lua"
{ lua_ids characters; cat <<'LUA'; } >"$WORK/batch.lua"
request = function()
  local i = math.random(#ids - 99)
  local body = '{"ids":[' .. table.concat(ids, ",", i, i + 99) .. ']}'
  return wrk.format("POST", "/v1/characters:batch", {["Content-Type"] = "application/json"}, body)
end
LUA
lookups() { # $1: label; every lookup kind for $2 seconds each
  for q in character corporation batch; do
    wrk -t1 -c8 -d"$2"s --latency -s "$WORK/$q.lua" "$API" >"$WORK/wrk-$1-$q.txt"
    put "$1_${q}_p50" "$(awk '/^ +50%/ {print $2}' "$WORK/wrk-$1-$q.txt")"
    put "$1_${q}_p99" "$(awk '/^ +99%/ {print $2}' "$WORK/wrk-$1-$q.txt")"
    put "$1_${q}_rps" "$(awk '/^Requests\/sec/ {printf "%.0f", $2}' "$WORK/wrk-$1-$q.txt")"
    put "$1_${q}_errors" "$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk-$1-$q.txt")"
  done
}

# 4. Replay into an empty state.
say "replaying $N killmails into kmflow"
P0=$(now)
start_kmflow "$WORK/state"
wait_ready
wait_committed
P1=$(now)
put replay_s "$(python3 -c "print($P1-$P0)")"
put replay_rss_kb "$(awk '/VmHWM/ {print $2}' /proc/$KPID/status)"
curl -s "$API/metrics" >"$WORK/metrics.txt"
python3 - "$WORK/metrics.txt" >>"$RES" <<'PY'
import sys
buckets, count, total = [], 0, 0.0
for line in open(sys.argv[1]):
    if line.startswith("kmflow_checkpoint_seconds_bucket"):
        le = line.split('le="')[1].split('"')[0]
        buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    elif line.startswith("kmflow_checkpoint_seconds_count"):
        count = float(line.split()[-1])
    elif line.startswith("kmflow_checkpoint_seconds_sum"):
        total = float(line.split()[-1])
def q(p):
    for le, c in buckets:
        if c >= p * count:
            return le
print(f"commits={count:.0f}\ncommit_mean_ms={total / max(count, 1) * 1000:.0f}")
print(f"commit_p50_le_ms={q(0.5)*1000:g}\ncommit_p99_le_ms={q(0.99)*1000:g}")
PY
python3 - "$API" "$WORK/sample-ids.tsv" >"$WORK/kmflow-sample.jsonl" <<'PY'
import json, sys, urllib.request
api, ids = sys.argv[1], {}
for line in open(sys.argv[2]):
    kind, i = line.split()
    ids.setdefault(kind, []).append(int(i))
for kind, batch in ids.items():
    req = urllib.request.Request(f"{api}/v1/{kind}s:batch", data=json.dumps({"ids": batch}).encode(),
                                 headers={"Content-Type": "application/json"})
    body = json.load(urllib.request.urlopen(req))
    for r in body["results"]:
        if r.get("stats") is not None:
            print(json.dumps({"kind": kind, "id": r["id"], **r["stats"]}))
PY

# 5. Lookups, idle.
say "lookups, idle"
lookups idle 10

# 6. Freshness under a live trickle, dated the day after the history ends (a trickle dated
#    today would move the stream clock years ahead at once: every window slides in one commit).
say "freshness under a live trickle"
"$BIN/examples/freshness" --brokers "127.0.0.1:$BPORT" --topic live --api "$API" \
  --rate "${TRICKLE_RATE:-50}" --seconds 20 --start-time "$HISTORY_END" | tee "$WORK/freshness.txt" >&2
put freshness "$(sed 's/^freshness: //' "$WORK/freshness.txt")"

# 7. Restart to ready.
stop_kmflow
put state_mb "$(du -sm "$WORK/state" | cut -f1)"
R0=$(now)
start_kmflow "$WORK/state"
wait_ready
put restart_s "$(python3 -c "print($(now)-$R0)")"
stop_kmflow

# 8. Lookups during a replay (into a second, empty state).
say "lookups during a replay"
start_kmflow "$WORK/state2"
wait_ready
until [ "$(committed)" -gt 0 ]; do sleep 0.05; done
lookups replay 8
put replay_progress "$(committed)"
stop_kmflow
rm -rf "$WORK/state2"
kill "$BPID"; wait "$BPID" 2>/dev/null || true; BPID=

# 9. The incumbent.
if [ -z "${SKIP_POSTGRES:-}" ]; then
  say "PostgreSQL: load, refresh, lookups"
  benches/postgres/baseline.sh "$WORK/killmails.jsonl" "$WORK/ids" "$WORK/sample-ids.tsv" "$WORK/pg" >"$WORK/pg.log" 2>&1 ||
    { cat "$WORK/pg.log" >&2; exit 1; }
  sed 's/^/pg_/' "$WORK/pg/results" >>"$RES"
fi

# 10. The answer check, and the table.
python3 - "$WORK" "$N" "$WORKERS" "$PARTITIONS" "$LEVEL" <<'PY'
import json, os, sys
work, n, workers, partitions, level = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
r = dict(l.rstrip("\n").split("=", 1) for l in open(f"{work}/results"))
f = lambda k: float(r[k])
def rows(path):
    return {(x["kind"], x["id"]): x for x in map(json.loads, open(path))} if os.path.exists(path) else None
FIELDS = ["involved", "kills", "losses", "npc_losses", "final_blows", "damage_done", "damage_taken",
          "isk_destroyed", "isk_lost", "points_destroyed", "points_lost", "solo_kills", "solo_losses"]
floor, kmflow, pg = rows(f"{work}/floor-sample.jsonl"), rows(f"{work}/kmflow-sample.jsonl"), rows(f"{work}/pg/sample.jsonl")
mismatch = []
for key, want in floor.items():
    for name, got in [("kmflow", kmflow), ("postgres", pg)]:
        if got is None:
            continue
        g = got.get(key)
        if g is None:
            mismatch.append(f"{name} has no {key}")
            continue
        for fld in FIELDS:
            a, b = want.get(fld), g.get(fld)
            if (a is None) != (b is None) or (a is not None and abs(float(a) - float(b)) > 0.005):
                mismatch.append(f"{name} {key} {fld}: {b} (floor {a})")
checked = "floor = kmflow" + (" = PostgreSQL" if pg is not None else "")

replay_rate = n / f("replay_s")
rows_out = []
def row(k, v, note=""):
    rows_out.append((k, v, note))
row("killmails (generated, seed 1)", f"{n:,}", f"{r['file_mb']} MiB of JSON Lines, {n / f('gen_s'):,.0f}/s to generate")
row("produce into the history topic", f"{f('import_s'):.1f} s", f"{n / f('import_s'):,.0f} killmails/s (kmflow import)")
row("floor (in-memory fold, 1 thread)", f"{f('floor_rate'):,.0f} killmails/s")
row("kmflow replay, empty state to all committed", f"{replay_rate:,.0f} killmails/s",
    f"{replay_rate / f('floor_rate'):.2f}x the floor; target >= 100,000/s and >= 0.5x floor")
row("kmflow peak RSS during replay", f"{int(r['replay_rss_kb']) / 1024:,.0f} MiB", "target < 1 GiB at 10M")
row("kmflow epoch commits (RocksDB, synced)", f"{r['commits']} commits, mean {r['commit_mean_ms']} ms",
    f"p50 <= {r['commit_p50_le_ms']} ms, p99 <= {r['commit_p99_le_ms']} ms (histogram buckets)")
row("kmflow state on disk", f"{r['state_mb']} MiB")
row("kmflow freshness (produce -> visible in API)", r["freshness"], "target p99 < 200 ms")
row("kmflow restart to ready (full state)", f"{f('restart_s'):.2f} s", "target < 5 s at 10M")
for phase, label in [("idle", "idle"), ("replay", "during replay")]:
    for q, what in [("character", "character"), ("corporation", "corporation"), ("batch", "batch of 100")]:
        errors = r.get(f"{phase}_{q}_errors") or ""
        row(f"kmflow {what} lookup, {label}",
            f"p50 {r[f'{phase}_{q}_p50']}, p99 {r[f'{phase}_{q}_p99']}",
            f"{int(r[f'{phase}_{q}_rps']):,} req/s (wrk -c8)" + (f", {errors} non-2xx" if errors else ""))
if pg is not None:
    load_refresh = f("pg_load_s") + f("pg_vacuum_s") + f("pg_refresh_s")
    row("PostgreSQL load (COPY JSON, shred, indexes)", f"{f('pg_load_s') + f('pg_vacuum_s'):.1f} s",
        f"{n / (f('pg_load_s') + f('pg_vacuum_s')):,.0f} killmails/s; {r['pg_participants']} participant rows, {r['pg_db_mb']} MiB")
    row("PostgreSQL REFRESH of the 3 views", f"{f('pg_refresh_s'):.1f} s",
        "implied freshness: >= this, back to back (today's cron: 15 min)")
    row("PostgreSQL load + refresh", f"{n / load_refresh:,.0f} killmails/s",
        f"kmflow replay is {replay_rate / (n / load_refresh):.1f}x; target >= 50x")
    for q in ["character", "corporation", "batch", "roster"]:
        row(f"PostgreSQL {q} lookup (pgbench -c8)", f"p50 {r[f'pg_{q}_p50_ms']}ms, p99 {r[f'pg_{q}_p99_ms']}ms",
            f"{int(r[f'pg_{q}_rps']):,} req/s")
row("answer check on the sample", checked if not mismatch else "MISMATCH",
    f"{len(floor)} entities x {len(FIELDS)} fields")
w = max(len(k) for k, _, _ in rows_out)
v = max(len(x) for _, x, _ in rows_out)
print(f"kmflow end-to-end: {n:,} killmails, {workers} workers, {partitions} partitions, stats level {level}, "
      f"{os.cpu_count()} cores")
for k, val, note in rows_out:
    print(f"  {k:<{w}}  {val:<{v}}  {note}")
if mismatch:
    print("answer check failed:", *mismatch[:20], sep="\n  ")
    sys.exit(1)
PY

#!/usr/bin/env bash
# Cluster benchmark, on this machine's cores, one table at the end:
#
#  1. The cost of the network exchange: N generated killmails (the built-in generator, 4
#     partitions, full statistics) replayed by 1 process x 2 workers and by 2 processes x 1
#     worker (timely's cluster mode over loopback TCP), alternately, ROUNDS times each: rate,
#     peak RSS (summed over the processes).
#  2. Forwarded lookups: on the 2-process cluster, GET /v1/characters/{id} asked of process 0
#     for characters it owns (answered from its own state) and for characters process 1 owns
#     (forwarded over HTTP): p50 / p99 over 2,000 sequential requests each, one keep-alive
#     connection.
#
#   benches/cluster.sh                 # N=200000, ROUNDS=2
#   N=1000000 ROUNDS=1 benches/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${KMFLOW_TARGET_DIR:-${HOME}/.cache/kmflow/target}"
export PATH="${HOME}/.cargo/bin:${PATH}"
N="${N:-200000}"
ROUNDS="${ROUNDS:-2}"
cargo build --release -q --bin kmflow
KMFLOW="${KMFLOW_BIN:-${CARGO_TARGET_DIR}/release/kmflow}"
WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/kmflow-cluster.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
say() { echo "cluster: $*" >&2; }
. benches/lib.sh
now() { date +%s.%N; }

# Sum of the committed next offsets (= killmails committed) as the API reports them.
committed() {
  curl -s -X POST -H 'content-type: application/json' -d '{"ids":[]}' "$1/v1/characters:batch" |
    python3 -c 'import sys,json
try:
    o=json.load(sys.stdin)["as_of"]["offsets"]; print(sum(v for p in o.values() for v in p.values()))
except Exception: print(0)'
}

peak_rss_mib() {
  local total=0
  for p in "$@"; do
    total=$((total + $(awk '/VmHWM/ {print $2}' "/proc/$p/status")))
  done
  echo $((total / 1024))
}

# start_process DIR WORKERS API_PORT [PROCESS PEERS APIS]
start_process() {
  local dir=$1 workers=$2 port=$3
  shift 3
  KMFLOW__SOURCE__KIND=generator KMFLOW__GENERATOR__COUNT=$((N / 4)) KMFLOW__GENERATOR__RATE_PER_SEC=0 \
    KMFLOW__PIPELINE__WORKERS="$workers" KMFLOW__STATE__DIR="$dir" KMFLOW__API__LISTEN="127.0.0.1:$port" \
    KMFLOW_LOG=warn "$KMFLOW" run "$@" >"$dir.log" 2>&1 &
  echo $!
}

# replay SHAPE: sets RATE and PEAK; leaves the processes running (pids in RUNNING).
replay() {
  local shape=$1 t0 pids=() api
  t0=$(now)
  if [ "$shape" = "1x2" ]; then
    local port
    port=$(free_port)
    pids+=("$(start_process "$WORK/single-$RANDOM" 2 "$port")")
    api="http://127.0.0.1:$port"
  else
    local a b pa pb
    a=$(free_port); b=$(free_port); pa=$(free_port); pb=$(free_port)
    local peers="127.0.0.1:$pa,127.0.0.1:$pb" apis="http://127.0.0.1:$a,http://127.0.0.1:$b"
    local run=$RANDOM
    pids+=("$(start_process "$WORK/p0-$run" 1 "$a" --process 0 --peers "$peers" --apis "$apis")")
    pids+=("$(start_process "$WORK/p1-$run" 1 "$b" --process 1 --peers "$peers" --apis "$apis")")
    api="http://127.0.0.1:$a"
    API1="http://127.0.0.1:$b"
  fi
  until [ "$(committed "$api")" = "$N" ]; do sleep 0.2; done
  local t1 rate rss
  t1=$(now)
  RATE=$(python3 -c "print(round($N / ($t1 - $t0)))")
  PEAK=$(peak_rss_mib "${pids[@]}")
  RUNNING=("${pids[@]}")
  PIDS+=("${pids[@]}")
  API0=$api
}

stop_running() {
  for p in "${RUNNING[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  sleep 1
}

declare -A RATES RSS
for r in $(seq 1 "$ROUNDS"); do
  for shape in 1x2 2x1; do
    replay "$shape"
    say "round $r, $shape: $RATE killmails/s, peak RSS $PEAK MiB"
    RATES[$shape]="${RATES[$shape]:-} $RATE"
    RSS[$shape]="${RSS[$shape]:-} $PEAK"
    if [ "$shape" = "2x1" ] && [ "$r" = "$ROUNDS" ]; then
      break
    fi
    stop_running
  done
done

# 2. Forwarded lookups on the running 2-process cluster.
LAT=$(python3 - "$API0" "$API1" <<'EOF'
import http.client, json, sys, time, urllib.parse
api0, api1 = sys.argv[1:3]
def conn(api):
    u = urllib.parse.urlparse(api)
    return http.client.HTTPConnection(u.hostname, u.port)
def get(c, path, local=False):
    c.request("GET", path, headers={"x-kmflow-local": "1"} if local else {})
    r = c.getresponse(); body = r.read(); return r.status, body
c0, c1 = conn(api0), conn(api1)
# The generator's characters; which process owns each: the one that answers it locally.
own, other = [], []
for i in range(3000):
    cid = 2112000000 + i
    if get(c0, f"/v1/characters/{cid}", local=True)[0] == 200:
        own.append(cid)
    elif get(c1, f"/v1/characters/{cid}", local=True)[0] == 200:
        other.append(cid)
def timed(ids):
    lat = []
    for i in range(2000):
        cid = ids[i % len(ids)]
        t = time.perf_counter(); status, _ = get(c0, f"/v1/characters/{cid}"); lat.append(time.perf_counter() - t)
        assert status == 200, status
    lat.sort()
    return lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
l50, l99 = timed(own); f50, f99 = timed(other)
print(f"{l50:.2f} {l99:.2f} {f50:.2f} {f99:.2f} {len(own)} {len(other)}")
EOF
)
read -r L50 L99 F50 F99 NOWN NOTHER <<<"$LAT"
stop_running

median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
R12=$(median "${RATES[1x2]}"); R21=$(median "${RATES[2x1]}")
echo
echo "## kmflow cluster, $N generated killmails, full statistics, $(nproc) cores"
echo
echo "| shape | rates (killmails/s) | median | ratio | peak RSS (MiB, all processes) |"
echo "|---|---|---|---|---|"
echo "| 1 process x 2 workers |${RATES[1x2]} | $R12 | 1.00 |${RSS[1x2]} |"
echo "| 2 processes x 1 worker |${RATES[2x1]} | $R21 | $(python3 -c "print(f'{$R21/$R12:.2f}')") |${RSS[2x1]} |"
echo
echo "| lookup on process 0 (2,000 sequential, keep-alive) | p50 ms | p99 ms |"
echo "|---|---|---|"
echo "| a character it owns ($NOWN of 3,000) | $L50 | $L99 |"
echo "| a character process 1 owns, forwarded ($NOTHER of 3,000) | $F50 | $F99 |"

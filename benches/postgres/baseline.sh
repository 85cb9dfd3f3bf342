#!/usr/bin/env bash
# The PostgreSQL baseline of benches/e2e.sh (the incumbent design): starts Debian's PostgreSQL
# on a free loopback port in a scratch directory, loads a JSON Lines file of killmails into
# `killmails` and `participants` (schema.sql, load.sql), refreshes the materialized views
# (views.sql), then measures lookups with pgbench.
#
#   benches/postgres/baseline.sh KILLMAILS.jsonl IDS_DIR SAMPLE_IDS.tsv OUT_DIR
#
# IDS_DIR holds characters.txt and corporations.txt (one id per line, the ids the kmflow lookups
# use). Writes OUT_DIR/results (key=value: load_s, refresh_s, latencies in ms, rows) and
# OUT_DIR/sample.jsonl (the views' rows for the ids of SAMPLE_IDS.tsv: kind, tab, id). Needs
# root (runs the server as the `postgres` user) and the Debian `postgresql` package.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
INPUT="$1"; IDS="$2"; SAMPLE_IDS="$3"; OUT="$4"
mkdir -p "$OUT"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
# The server's files go under /tmp: OUT may sit where the postgres user cannot reach.
PGDATA=$(mktemp -d /tmp/kmflow-pgdata.XXXXXX)
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$PGDATA"
[ "$(id -u)" -eq 0 ] && chown postgres "$PGDATA"
as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 >/dev/null
# Tuned for a bulk-loading, analytic workload on this machine; fsync and synchronous commit stay
# on, as kmflow's commits are synced too.
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/postgres.log" -w start -o "\
  -p $PGPORT -k $PGDATA -c listen_addresses=127.0.0.1 \
  -c shared_buffers=4GB -c work_mem=256MB -c maintenance_work_mem=1GB \
  -c max_wal_size=16GB -c checkpoint_timeout=30min -c effective_cache_size=16GB" >/dev/null
trap 'as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast stop >/dev/null 2>&1 || true; rm -rf "$PGDATA"' EXIT
PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres)
now() { date +%s.%N; }

"${PSQL[@]}" -f "$HERE/schema.sql"
"${PSQL[@]}" -c "SET client_min_messages = warning" -f "$HERE/views.sql" >/dev/null

# Load: the raw JSON in (COPY, in chunks as an application would batch it), shredded in SQL.
L0=$(now)
cat >"$OUT/load_chunk.sh" <<SH
set -e
$(printf '%q ' "${PSQL[@]}") -c "\\copy staging (doc) FROM STDIN WITH (FORMAT csv, QUOTE E'\\\\x01', DELIMITER E'\\\\x02')"
$(printf '%q ' "${PSQL[@]}") -f "$HERE/load.sql"
SH
split -l 100000 --filter="bash $OUT/load_chunk.sh" "$INPUT"
L1=$(now)
"${PSQL[@]}" -c "VACUUM ANALYZE killmails" -c "VACUUM ANALYZE participants"
L2=$(now)

# Refresh every view once (what the 15-minute cron does).
R0=$(now)
"${PSQL[@]}" -c "REFRESH MATERIALIZED VIEW character_activity_summary" \
  -c "REFRESH MATERIALIZED VIEW corporation_activity_summary" \
  -c "REFRESH MATERIALIZED VIEW corporation_member_summary"
R1=$(now)
"${PSQL[@]}" -c "ANALYZE character_activity_summary; ANALYZE corporation_activity_summary; ANALYZE corporation_member_summary"

# The sample of the three-way check, as the views answer it.
"${PSQL[@]}" -c "CREATE TABLE sample_ids (kind text, id bigint)"
"${PSQL[@]}" -c "\\copy sample_ids FROM '$SAMPLE_IDS'"
"${PSQL[@]}" -At -c "
  SELECT row_to_json(t) FROM (
    SELECT 'character' AS kind, character_id AS id, c.* FROM character_activity_summary c
      JOIN sample_ids s ON s.kind = 'character' AND s.id = c.character_id
    UNION ALL
    SELECT 'corporation', corporation_id, c.* FROM corporation_activity_summary c
      JOIN sample_ids s ON s.kind = 'corporation' AND s.id = c.corporation_id) t" >"$OUT/sample.jsonl"

# Lookups with pgbench: 8 clients like the wrk runs against kmflow, prepared statements.
"${PSQL[@]}" -c "CREATE TABLE bench_ids (kind char, i int, id bigint, PRIMARY KEY (kind, i))"
awk '{print "c\t" NR "\t" $1}' "$IDS/characters.txt" >"$OUT/bench_ids.tsv"
awk '{print "o\t" NR "\t" $1}' "$IDS/corporations.txt" >>"$OUT/bench_ids.tsv"
"${PSQL[@]}" -c "\\copy bench_ids FROM '$OUT/bench_ids.tsv'"
NCHAR=$(wc -l <"$IDS/characters.txt"); NCORP=$(wc -l <"$IDS/corporations.txt")
cat >"$OUT/character.sql" <<SQL
\\set i random(1, $NCHAR)
SELECT * FROM character_activity_summary WHERE character_id = (SELECT id FROM bench_ids WHERE kind = 'c' AND i = :i);
SQL
cat >"$OUT/corporation.sql" <<SQL
\\set i random(1, $NCORP)
SELECT * FROM corporation_activity_summary WHERE corporation_id = (SELECT id FROM bench_ids WHERE kind = 'o' AND i = :i);
SQL
cat >"$OUT/batch.sql" <<SQL
\\set i random(1, $((NCHAR - 99)))
SELECT * FROM character_activity_summary WHERE character_id IN (SELECT id FROM bench_ids WHERE kind = 'c' AND i BETWEEN :i AND :i + 99);
SQL
cat >"$OUT/roster.sql" <<SQL
\\set i random(1, $NCORP)
SELECT * FROM corporation_member_summary WHERE corporation_id = (SELECT id FROM bench_ids WHERE kind = 'o' AND i = :i) ORDER BY kills DESC LIMIT 100;
SQL
{
  echo "load_s=$(python3 -c "print($L1-$L0)")"
  echo "vacuum_s=$(python3 -c "print($L2-$L1)")"
  echo "refresh_s=$(python3 -c "print($R1-$R0)")"
  echo "participants=$("${PSQL[@]}" -At -c "SELECT count(*) FROM participants")"
  echo "killmails=$("${PSQL[@]}" -At -c "SELECT count(*) FROM killmails")"
  echo "db_mb=$("${PSQL[@]}" -At -c "SELECT pg_database_size('postgres') / 1048576")"
} >"$OUT/results"
for q in character corporation batch roster; do
  rm -f "$OUT"/pgb_"$q"*
  (cd "$OUT" && "$PGBIN/pgbench" -n -M prepared -c 8 -j 2 -T 10 -l --log-prefix="pgb_$q" \
    -h 127.0.0.1 -p "$PGPORT" -U postgres -f "$OUT/$q.sql" postgres >"$OUT/pgbench_$q.txt" 2>&1)
  cat "$OUT"/pgb_"$q".* | python3 -c '
import sys
lat = sorted(int(l.split()[2]) for l in sys.stdin)
q = lambda p: lat[max(0, int(len(lat) * p + 0.5) - 1)] / 1000
print(f"'"$q"'_p50_ms={q(0.5):.3f}\n'"$q"'_p99_ms={q(0.99):.3f}\n'"$q"'_rps={len(lat)/10:.0f}")' >>"$OUT/results"
done

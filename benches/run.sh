#!/usr/bin/env bash
# The engine benchmark: N rows per side (default 1,000,000) of 7 mixed columns in PostgreSQL, with
# known drift (1 % missing, 1 % changed, 0.5 % NULL-vs-value, 0.2 % extra). In one run, 3 rounds
# interleaved, it times:
#   floor   both binary COPYs of the tables, in parallel, to /dev/null (what reading costs)
#   plan    recon plan --format json --limit 0
#   apply   recon apply of the drift into a fresh copy of the destination (vacuumed, as the
#           destination the plan reads is settled by earlier reads), after a plan of that copy;
#           the writes' share is what the apply takes after its last side is read less what
#           that plan takes after its own (the writes overlap only the passes after the read;
#           the read, most of both runs' time, is where this machine's pace strays), and,
#           printed beside it, the apply's whole time less that plan's
#   duckdb  DuckDB's postgres_scanner + FULL JOIN counting the same drift (when installed:
#           pip install duckdb==1.4.4 duckdb-ext-postgres==1.4.4.20260205)
# then one plan under memory_limit = 256MB and one initial load (apply into an empty table), and prints the median wall time, rows/s, peak RSS and
# the ratio to the floor of each, and checks recon's counts against SQL. Before each timed command
# the server's and the kernel's dirty pages are flushed (settle).
#   bash benches/run.sh [ROWS]
# Release build (slow from clean; the target dir is kept between runs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-1000000}"
ROUNDS="${RECON_BENCH_ROUNDS:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/recon/target}"

source tests/servers.sh
install_packages
start_postgres
PSQL=(psql -X -q -v ON_ERROR_STOP=1 "$RECON_TEST_PG_URL")

echo "building the release binary…" >&2
cargo build --release --quiet
RECON="$CARGO_TARGET_DIR/release/recon"

echo "generating $ROWS rows per side…" >&2
"${PSQL[@]}" <<SQL
SET TimeZone = 'UTC';
CREATE TABLE src (k bigint, name text, price numeric(12,2), qty int, ratio float8, at timestamptz, flag bool);
INSERT INTO src SELECT g, 'name-' || g, (g % 100000) / 100.0, g % 1000, g / 7.0,
  '2024-01-01'::timestamptz + g * interval '1 second', g % 2 = 0 FROM generate_series(1, $ROWS) g;
CREATE TABLE dst (k bigint PRIMARY KEY, name text, price numeric(12,2), qty int, ratio float8, at timestamptz, flag bool);
INSERT INTO dst SELECT k, name, CASE WHEN k % 100 = 50 THEN price + 1 ELSE price END,
  CASE WHEN k % 200 = 7 THEN NULL ELSE qty END, ratio, at, flag
  FROM src WHERE k % 100 <> 0;
INSERT INTO dst SELECT $ROWS + g, 'extra', 1, 1, 1, now(), true FROM generate_series(1, $ROWS / 500) g;
ANALYZE;
SQL
expected=$("${PSQL[@]}" -At -F' ' <<'SQL'
SELECT (SELECT count(*) FROM src s WHERE NOT EXISTS (SELECT 1 FROM dst d WHERE d.k = s.k)),
       (SELECT count(*) FROM src s JOIN dst d USING (k)
          WHERE (s.name, s.price, s.qty, s.ratio, s.at, s.flag) IS DISTINCT FROM (d.name, d.price, d.qty, d.ratio, d.at, d.flag)),
       (SELECT count(*) FROM dst d WHERE NOT EXISTS (SELECT 1 FROM src s WHERE s.k = d.k));
SQL
)

job() { # job NAME DESTINATION_TABLE [extra lines]
  printf 'name = "%s"\n[source]\nurl = "%s"\ntable = "src"\n[destination]\nurl = "%s"\ntable = "%s"\n[match]\nk = "k"\n[write]\ndeletes = true\n%s\n' \
    "$1" "$RECON_TEST_PG_URL" "$RECON_TEST_PG_URL" "$2" "${3:-}" > "$SERVERS_DIR/$1.toml"
}
job plan dst
job small dst "[engine]
memory_limit = \"256MB\""

# Before each timed command: what earlier commands wrote (a copied table, an apply's WAL) is
# flushed to disk, so that no command pays for another's writes (the kernel flushing 2 GB of a
# fresh copy of the destination during the apply made its diff passes ~3 × slower).
settle() {
  "${PSQL[@]}" -c "CHECKPOINT"
  sync
}

# measure NAME COMMAND…: wall seconds and peak RSS (KiB) appended to $SERVERS_DIR/NAME.times;
# for a recon command run with -v, also the seconds from its last "snapshot read" log line to
# its end, appended to $SERVERS_DIR/NAME.after
measure() {
  local name=$1; shift
  settle
  /usr/bin/time -f "%e %M" -o "$SERVERS_DIR/t" "$@" >"$SERVERS_DIR/$name.out" 2>"$SERVERS_DIR/$name.err" \
    || { cat "$SERVERS_DIR/$name.err" >&2; exit 1; }
  local ended last_read
  ended=$(date +%s.%N)
  cat "$SERVERS_DIR/t" >> "$SERVERS_DIR/$name.times"
  last_read=$( (grep 'snapshot read' "$SERVERS_DIR/$name.err" || true) | tail -1 | cut -d' ' -f1)
  if [ -n "$last_read" ]; then
    echo "$ended - $(date -d "$last_read" +%s.%N)" | bc -l >> "$SERVERS_DIR/$name.after"
  fi
}

floor() {
  "${PSQL[@]}" -c "COPY src TO STDOUT (FORMAT binary)" >/dev/null &
  "${PSQL[@]}" -c "COPY dst TO STDOUT (FORMAT binary)" >/dev/null
  wait
}

DUCKDB=""
if python3 -c "import duckdb, duckdb_ext" 2>/dev/null; then
  DUCKDB=1
  cat > "$SERVERS_DIR/peer.py" <<PY
import glob, os
import duckdb, duckdb_ext
# The extension ships inside the duckdb-ext-postgres package: load it from there, offline.
ext = glob.glob(os.path.join(list(duckdb_ext.__path__)[0], "extensions", "*", "*", "postgres_scanner.duckdb_extension"))[0]
con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
con.execute(f"LOAD '{ext}'")
con.execute("ATTACH 'host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres' AS pg (TYPE postgres, READ_ONLY)")
print(con.execute("""
SELECT count(*) FILTER (WHERE d.k IS NULL),
       count(*) FILTER (WHERE s.k IS NOT NULL AND d.k IS NOT NULL AND
         (s.name, s.price, s.qty, s.ratio, s.at, s.flag) IS DISTINCT FROM (d.name, d.price, d.qty, d.ratio, d.at, d.flag)),
       count(*) FILTER (WHERE s.k IS NULL)
FROM pg.public.src s FULL JOIN pg.public.dst d ON s.k = d.k""").fetchone())
PY
fi

for round in $(seq 1 $ROUNDS); do
  echo "round $round of $ROUNDS…" >&2
  measure floor bash -c "$(declare -p PSQL); $(declare -f floor); floor"
  measure plan "$RECON" plan "$SERVERS_DIR/plan.toml" --format json --limit 0 --no-progress
  "${PSQL[@]}" -c "DROP TABLE IF EXISTS dst_apply; CREATE TABLE dst_apply (LIKE dst INCLUDING ALL); INSERT INTO dst_apply SELECT * FROM dst;" \
    -c "VACUUM ANALYZE dst_apply"
  job apply dst_apply
  # The writes' share: the apply against a plan of the same copy timed just before it (the same
  # table in the same minute: this machine's pace drifts by more than the writes take).
  measure copy "$RECON" plan "$SERVERS_DIR/apply.toml" --format json --limit 0 --no-progress -v
  rm -rf "$SERVERS_DIR/.recon"
  measure apply "$RECON" apply "$SERVERS_DIR/apply.toml" --format json --limit 0 --force --no-progress -v
  [ -n "$DUCKDB" ] && measure duckdb python3 "$SERVERS_DIR/peer.py"
done
measure small "$RECON" plan "$SERVERS_DIR/small.toml" --format json --limit 0 --no-progress
# The initial load: every source row inserted into an empty table (with its primary key).
"${PSQL[@]}" -c "DROP TABLE IF EXISTS dst_load; CREATE TABLE dst_load (LIKE dst INCLUDING ALL);"
job load dst_load
measure load "$RECON" apply "$SERVERS_DIR/load.toml" --format json --limit 0 --force --no-progress

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
wall() { awk '{print $1}' "$SERVERS_DIR/$1.times" | median; }
rss() { awk '{print $2}' "$SERVERS_DIR/$1.times" | sort -n | tail -1; }
floor_s=$(wall floor)
row() { # row NAME LABEL ROWS_HANDLED
  local s; s=$(wall "$1")
  printf '%-34s %8.2f s %12.0f rows/s %8d MiB %7.2f x floor\n' "$2" "$s" "$(echo "$3 / $s" | bc -l)" \
    "$(( $(rss "$1") / 1024 ))" "$(echo "$s / $floor_s" | bc -l)"
}
echo
echo "rows per side: $ROWS; $(nproc) cores; median of $ROUNDS rounds (memory-limited plan: 1 run)"
row floor "floor: both binary COPYs" $((2 * ROWS))
row plan "recon plan" $((2 * ROWS))
# Each round's plan against the floor timed just before it (this machine's pace drifts between
# rounds by more than the plan's margin).
printf '%-34s %s\n' "  round by round" "$(paste -d' ' "$SERVERS_DIR/plan.times" "$SERVERS_DIR/floor.times" \
  | awk '{printf "%.2f ", $1 / $3}')x the floor of its round"
row small "recon plan, memory_limit 256MB" $((2 * ROWS))
drift=$(echo "$expected" | awk '{print $1 + $2 + $3}')
row apply "recon apply (the drift)" "$drift"
row copy "recon plan of that copy" $((2 * ROWS))
# Paired by round: each apply less the plan of its own copy, then the median of those; first
# counted from each one's last read (what the writes add), then over the whole run.
writes() { # writes LABEL FIELD_OF_APPLY FIELD_OF_COPY FILE_OF_APPLY FILE_OF_COPY
  local w
  w=$(paste -d' ' "$4" "$5" | awk -v a="$2" -v c="$3" '{print $a - $c}' | median)
  printf '%-34s %8.2f s %12.0f rows/s   (rounds: %s)\n' "$1" \
    "$w" "$(echo "$drift / $w" | bc -l)" \
    "$(paste -d' ' "$4" "$5" | awk -v a="$2" -v c="$3" '{printf "%.2f ", $a - $c}')"
}
writes "  of which writes (after the read)" 1 2 "$SERVERS_DIR/apply.after" "$SERVERS_DIR/copy.after"
writes "  (apply - plan, whole runs)" 1 3 "$SERVERS_DIR/apply.times" "$SERVERS_DIR/copy.times"
row load "recon apply into an empty table" "$ROWS"
[ -n "$DUCKDB" ] && row duckdb "DuckDB postgres_scanner + FULL JOIN" $((2 * ROWS))

got=$(jq -r '.summary | "\(.insert) \(.update) \(.delete)"' "$SERVERS_DIR/plan.out")
small=$(jq -r '.summary | "\(.insert) \(.update) \(.delete)"' "$SERVERS_DIR/small.out")
echo "counts insert/update/delete: SQL $expected; recon $got; recon at 256MB $small"
[ -n "$DUCKDB" ] && echo "DuckDB counts: $(cat "$SERVERS_DIR/duckdb.out")"
if [ "$got" != "$expected" ] || [ "$small" != "$expected" ]; then
  echo "MISMATCH: recon's counts differ from SQL's" >&2
  exit 1
fi

#!/usr/bin/env bash
# Benchmark: `recon plan --format json --limit 0` on N rows per side in PostgreSQL (default
# 1,000,000), next to the time a plain binary COPY of both tables takes on the same server.
# Prints wall time, rows/s, peak memory (RSS), and checks the counts against SQL.
#   bash benches/plan_1m.sh [ROWS]
# Builds the release profile (slow from clean; the target dir is kept between runs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-1000000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/recon/target}"

source tests/servers.sh
install_packages
start_postgres
PSQL=(psql -X -q -v ON_ERROR_STOP=1 "$RECON_TEST_PG_URL")

echo "building release binary…" >&2
cargo build --release --quiet
RECON="$CARGO_TARGET_DIR/release/recon"

echo "generating $ROWS rows per side…" >&2
"${PSQL[@]}" <<SQL
CREATE TABLE source_order (reference text, price numeric(10,2), item_count int4, updated_at timestamptz);
INSERT INTO source_order
  SELECT 'R-' || g, (g % 100000) / 100.0, g % 17, '2024-01-01'::timestamptz + g * interval '1 second'
  FROM generate_series(1, $ROWS) g;
-- destination: every 100th row has another price, every 200th is missing, 0.5 % extra rows.
CREATE TABLE destination_order (id bigserial, code text, total_price numeric(12,2), number_of_items int8, updated_at timestamptz);
INSERT INTO destination_order (code, total_price, number_of_items, updated_at)
  SELECT reference, CASE WHEN g % 100 = 0 THEN price + 1 ELSE price END, item_count, updated_at
  FROM source_order, LATERAL (SELECT substr(reference, 3)::int AS g) x
  WHERE g % 200 <> 1;
INSERT INTO destination_order (code, total_price, number_of_items, updated_at)
  SELECT 'X-' || g, 1, 1, now() FROM generate_series(1, $ROWS / 200) g;
ANALYZE;
SQL

cat > "$SERVERS_DIR/job.toml" <<TOML
name = "bench"
[source]
url = "$RECON_TEST_PG_URL"
table = "source_order"
[destination]
url = "$RECON_TEST_PG_URL"
table = "destination_order"
id = "id"
[match]
reference = "code"
[compare]
price = "total_price"
item_count = "number_of_items"
updated_at = "updated_at"
TOML

expected=$("${PSQL[@]}" -At -F' ' <<'SQL'
SELECT
  (SELECT count(*) FROM source_order s WHERE NOT EXISTS (SELECT 1 FROM destination_order d WHERE d.code = s.reference)),
  (SELECT count(*) FROM source_order s JOIN destination_order d ON d.code = s.reference
     WHERE (s.price, s.item_count, s.updated_at) IS DISTINCT FROM (d.total_price, d.number_of_items, d.updated_at)),
  (SELECT count(*) FROM destination_order d WHERE NOT EXISTS (SELECT 1 FROM source_order s WHERE s.reference = d.code));
SQL
)

start=$(date +%s.%N)
"${PSQL[@]}" -c "COPY source_order TO STDOUT (FORMAT binary)" >/dev/null
"${PSQL[@]}" -c "COPY destination_order TO STDOUT (FORMAT binary)" >/dev/null
copy_s=$(echo "$(date +%s.%N) - $start" | bc)

/usr/bin/time -v "$RECON" plan "$SERVERS_DIR/job.toml" --format json --limit 0 \
  >"$SERVERS_DIR/out.json" 2>"$SERVERS_DIR/time.txt"
wall=$(grep "Elapsed (wall clock)" "$SERVERS_DIR/time.txt" | awk '{print $NF}')
rss_kb=$(grep "Maximum resident set size" "$SERVERS_DIR/time.txt" | awk '{print $NF}')
secs=$(echo "$wall" | awk -F: '{ if (NF == 3) print $1*3600 + $2*60 + $3; else print $1*60 + $2 }')
got=$(jq -r '.summary | "\(.insert) \(.update) \(.delete)"' "$SERVERS_DIR/out.json")

echo "rows per side:          $ROWS"
echo "recon plan wall time:   ${secs} s"
echo "rows/s (both sides):    $(echo "2 * $ROWS / $secs" | bc)"
echo "peak memory (RSS):      $((rss_kb / 1024)) MiB"
echo "binary COPY of both:    ${copy_s} s (psql to /dev/null)"
echo "counts insert/update/delete: recon $got, SQL $expected"
if [ "$got" != "$expected" ]; then
  echo "MISMATCH: recon's counts differ from SQL's" >&2
  exit 1
fi

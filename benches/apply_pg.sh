#!/usr/bin/env bash
# Benchmark: `recon apply` into PostgreSQL — ROWS inserts into an empty table, then ROWS updates
# (default 100,000 each). Prints wall time and rows/s for each, and checks convergence.
#   bash benches/apply_pg.sh [ROWS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-100000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/recon/target}"

source tests/servers.sh
install_packages
start_postgres
PSQL=(psql -X -q -v ON_ERROR_STOP=1 "$RECON_TEST_PG_URL")

echo "building release binary…" >&2
cargo build --release --quiet
RECON="$CARGO_TARGET_DIR/release/recon"

"${PSQL[@]}" <<SQL
CREATE TABLE source_order (reference text, price numeric(10,2), item_count int4, note text);
INSERT INTO source_order SELECT 'R-' || g, (g % 100000) / 100.0, g % 17, 'note ' || g FROM generate_series(1, $ROWS) g;
CREATE TABLE destination_order (id bigserial PRIMARY KEY, code text UNIQUE, total_price numeric(10,2), number_of_items int4, note text);
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
note = "note"
[write]
batch_size = 10000
TOML

timed_apply() {
  local start end
  start=$(date +%s.%N)
  "$RECON" apply "$SERVERS_DIR/job.toml" --no-progress -f json --limit 0 >"$SERVERS_DIR/out.json"
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

t_insert=$(timed_apply)
applied_insert=$(jq .applied.insert "$SERVERS_DIR/out.json")
"${PSQL[@]}" -c "UPDATE source_order SET price = price + 1, note = note || '!'"
t_update=$(timed_apply)
applied_update=$(jq .applied.update "$SERVERS_DIR/out.json")
"$RECON" plan "$SERVERS_DIR/job.toml" -f json --limit 0 >"$SERVERS_DIR/plan.json"
left=$(jq '.summary.insert + .summary.update' "$SERVERS_DIR/plan.json")

echo "rows:                    $ROWS"
echo "apply $applied_insert inserts:   ${t_insert} s, $(echo "$applied_insert / $t_insert" | bc) rows/s (includes both snapshots and the diff)"
echo "apply $applied_update updates:   ${t_update} s, $(echo "$applied_update / $t_update" | bc) rows/s (includes both snapshots and the diff)"
echo "changes left after both: $left"
[ "$left" = 0 ] || { echo "NOT CONVERGED" >&2; exit 1; }

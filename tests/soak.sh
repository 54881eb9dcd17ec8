#!/usr/bin/env bash
# The full crash soak: 50 applies of an incremental PostgreSQL job, each killed at a random time
# or at a random crash point (cargo feature `failpoints`), then one clean run that must converge
# (tests/soak.rs). Starts its own PostgreSQL like tests/run.sh. `bash tests/soak.sh [KILLS]`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/recon/target}"
source tests/servers.sh
install_packages
start_postgres
RECON_SOAK_KILLS="${1:-50}" cargo test --features failpoints --test main soak -- --nocapture

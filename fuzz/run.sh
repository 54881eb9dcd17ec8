#!/usr/bin/env bash
# Fuzz one target (default: all three, 60 s each) with cargo-fuzz, starting from the seed corpus.
# Needs a nightly toolchain and `cargo install cargo-fuzz`; findings land in fuzz/artifacts/.
#   bash fuzz/run.sh [job_file|copy_decoder|http_page] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
targets="${1:-job_file copy_decoder http_page}"
for t in $targets; do
  cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="${2:-60}"
done

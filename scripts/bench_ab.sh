#!/usr/bin/env bash
# A/B runs of the webhook bench: alternates prebuilt bench binaries, ROUNDS times each, one workload list and
# store, with a PostgreSQL CHECKPOINT before each run so no run pays for the one before. Prints the table rows.
#
# Usage: scripts/bench_ab.sh WORKLOADS STORE ROUNDS BIN...
#   BIN is a copy of target/release/deps/webhooks-<hash> made after `cargo bench --bench webhooks --no-run`
#   at each version (the file name is the same for every version: copy it before building the next).
# Example: scripts/bench_ab.sh W6,W1 postgres 1 /tmp/webhooks-base /tmp/webhooks-new
set -euo pipefail
workloads=$1 store=$2 rounds=$3
shift 3
for round in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    psql postgres://postgres@127.0.0.1:5432/test -qc CHECKPOINT >/dev/null 2>&1 || true
    echo "=== $bin round $round ($store $workloads) $(date -u +%H:%M:%S)"
    "$bin" --bench --store "$store" --workload "$workloads" 2>/dev/null | grep -E "^\| (ceiling|W|U|C)"
  done
done

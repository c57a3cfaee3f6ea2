#!/usr/bin/env bash
# Schemathesis against hsda's own OpenAPI document (RELIABILITY.md, "Input fuzzing"): starts
# `hsda serve --demo` on a temporary SQLite file, makes an admin API key, and lets schemathesis send
# generated requests, valid and invalid, to every operation of /openapi.json with that key. Fails on any
# 5xx (the `not_a_server_error` check) and on any internal error the server logged.
#
# Usage: scripts/schemathesis.sh [MAX_EXAMPLES_PER_OPERATION] [extra schemathesis arguments...]
#        HSDA_SCHEMATHESIS_CHECKS=all scripts/schemathesis.sh 5     # every check, e.g. response schemas
#
# Server and schemathesis run together in a network namespace of their own that holds only a loopback
# interface (`unshare --net`, as root): subscriptions that schemathesis creates may name public addresses,
# and the webhook worker must not be able to reach any of them.
set -euo pipefail
cd "$(dirname "$0")/.."

examples="${1:-25}"
shift || true
seed="${HSDA_SCHEMATHESIS_SEED:-20261204}"

if ! command -v schemathesis >/dev/null 2>&1; then
  pip install --quiet 'schemathesis>=4,<5'
fi
cargo build --quiet --bin hsda
bin="${CARGO_TARGET_DIR:-target}/debug/hsda"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
db="sqlite://$work/hsda.db"
"$bin" migrate --database-url "$db" >/dev/null
key="$("$bin" keys create --scope admin --tenant schemathesis --database-url "$db" | tail -n 1)"

# Everything below runs inside the private network namespace.
export HSDA_BIN="$bin" HSDA_DB="$db" HSDA_KEY="$key" EXAMPLES="$examples" SEED="$seed" WORK="$work" \
  CHECKS="${HSDA_SCHEMATHESIS_CHECKS:-not_a_server_error}"
unshare --net bash -s -- "$@" <<'INNER'
set -euo pipefail
ip link set lo up
port=18473
RUST_LOG=warn,hsda=error "$HSDA_BIN" serve --demo --demo-services 50 --bind "127.0.0.1:$port" \
  --database-url "$HSDA_DB" >"$WORK/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1; then break; fi
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$port/" >/dev/null

common=(--header "Authorization: Bearer $HSDA_KEY" --max-examples "$EXAMPLES" --seed "$SEED" --workers 2
        --request-timeout 30 --suppress-health-check all --warnings off --output-truncate true)
status=0
schemathesis run "http://127.0.0.1:$port/openapi.json" "${common[@]}" --checks "$CHECKS" "$@" || status=$?
if grep -q "internal error" "$WORK/server.log"; then
  echo "--- internal errors the server logged ---"
  grep -A3 "internal error" "$WORK/server.log" | head -n 60
  status=1
fi
exit "$status"
INNER

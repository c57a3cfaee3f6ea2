#!/usr/bin/env bash
# How fast a follower catches up with a source (BENCHMARKS.md, "Following"): generates a directory of
# SERVICES services, imports it into a source (SQLite), serves it, starts a fresh follower on STORE
# (sqlite, or postgres: a database `hsda_follow_bench` on 127.0.0.1, dropped first) and times until the
# follower's cursor reaches the source's last event. Prints events, seconds, events/s.
#
# Usage: scripts/follow_catch_up.sh [SERVICES] [STORE]      (release binary: cargo build --release first)
set -euo pipefail
cd "$(dirname "$0")/.."
services="${1:-2000}" store="${2:-sqlite}"
bin="${CARGO_TARGET_DIR:-target}/release/hsda"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "$store" = postgres ]; then
    sleep 1
    psql postgres://postgres@127.0.0.1:5432/test -qc "DROP DATABASE IF EXISTS hsda_follow_bench" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
"$bin" generate --services "$services" --seed 7 --out "$work/gen" >/dev/null
"$bin" import "$work/gen" --quiet --database-url "sqlite://$work/source.db" >/dev/null
key="$("$bin" keys create --scope admin --tenant ops --database-url "sqlite://$work/source.db" | tail -n 1)"
"$bin" serve --bind 127.0.0.1:18701 --database-url "sqlite://$work/source.db" >"$work/source.log" 2>&1 &
pids+=($!)
case "$store" in
  sqlite) follower_db="sqlite://$work/follower.db" ;;
  postgres)
    psql postgres://postgres@127.0.0.1:5432/test -qc "DROP DATABASE IF EXISTS hsda_follow_bench" -c "CREATE DATABASE hsda_follow_bench"
    follower_db="postgres://postgres@127.0.0.1:5432/hsda_follow_bench" ;;
  *) echo "store: sqlite or postgres" >&2; exit 2 ;;
esac
"$bin" migrate --database-url "$follower_db" >/dev/null
fkey="$("$bin" keys create --scope admin --tenant ops --database-url "$follower_db" | tail -n 1)"
for _ in $(seq 100); do curl -fs http://127.0.0.1:18701/health >/dev/null && break; sleep 0.1; done
last="$(curl -fs "http://127.0.0.1:18701/events?after=0&limit=1" -o /dev/null && \
  curl -fs -H "Authorization: Bearer $key" http://127.0.0.1:18701/metrics | awk '/^hsda_event_sequence /{print $2}')"
start=$(date +%s.%N)
"$bin" serve --bind 127.0.0.1:18702 --database-url "$follower_db" --follow http://127.0.0.1:18701 >"$work/follower.log" 2>&1 &
pids+=($!)
for _ in $(seq 6000); do
  at="$(curl -fs -H "Authorization: Bearer $fkey" http://127.0.0.1:18702/follow 2>/dev/null |
    python3 -c 'import json,sys; s=json.load(sys.stdin)["sources"]; print(s[0]["after_sequence"] if s else 0)' 2>/dev/null || echo 0)"
  [ "$at" -ge "$last" ] && break
  sleep 0.1
done
end=$(date +%s.%N)
python3 -c "e=$last; s=$end-$start; print(f'{e} events in {s:.1f} s: {e/s:.0f} events/s ($store follower, $services services)')"

#!/usr/bin/env bash
# Coverage-guided fuzzing of hsda (RELIABILITY.md, "Input fuzzing"): builds the cargo-fuzz targets of fuzz/
# and runs each for SECONDS (default 30) from the committed seeds (fuzz/seeds/TARGET) plus the corpus earlier
# runs grew (fuzz/corpus/TARGET, not committed). A panic or a broken oracle stops the run, fails the script
# and leaves the input in fuzz/artifacts/TARGET/; replay it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none TARGET fuzz/artifacts/TARGET/crash-...
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]        targets: import_package write_json (default: both)
#
# Only the stable toolchain is installed; RUSTC_BOOTSTRAP=1 lets it accept the -Z flags cargo-fuzz passes.
# No sanitizer: the code under test is safe Rust (bundled SQLite is C, but cargo-fuzz does not instrument
# C code either way), and without AddressSanitizer every execution is about twice as fast.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-30}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(import_package write_json)
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
# Instrumented builds use other flags than hsda's own: a directory of their own keeps both caches warm.
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
flags=(--sanitizer none --target-dir "$target_dir")

cargo fuzz build "${flags[@]}"
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
  echo "--- fuzzing $target for ${seconds}s"
  cargo fuzz run "${flags[@]}" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$target/"
done

#!/usr/bin/env bash
# The whole test suite, as README.md gives it and .ci/run calls it:
#   setup, formatting, clippy, unit + integration + doc tests, loom models, docs.
# Ends with one summary line "N passed, M failed" over every cargo test binary.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/setup-native.sh   # the real OpenBLAS / BLIS / MKL / OpenMP libraries

log=$(mktemp)
trap 'rm -f "$log"' EXIT

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (unit, integration, doc tests)"
cargo test --workspace 2>&1 | tee -a "$log"

step "loom models of the token protocol (--cfg budget_loom)"
RUSTFLAGS="--cfg budget_loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p budget-core --lib --release loom -- --test-threads=1 2>&1 | tee -a "$log"

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
if [ "$passed" -eq 0 ]; then
  echo "no test ran: that is a failure" >&2
  exit 1
fi
printf '\n%s passed, %s failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# The whole test suite, as README.md gives it and .ci/run calls it:
#   setup, formatting, clippy, the other platforms' checks (scripts/check-targets.sh),
#   unit + integration + doc tests, loom models, Miri over budget-core's unsafe, docs,
#   and the Python module (crates/budget-py, its own workspace): fmt, clippy, its
#   manylinux2014 wheel (scripts/build-wheel.sh: built, checked, installed into a fresh
#   venv and imported), pytest.
# Ends with one summary line "N passed, M failed" over every cargo test binary and
# pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/setup-native.sh   # the real OpenBLAS / BLIS / MKL / OpenMP libraries
scripts/setup-python.sh   # .venv: NumPy, SciPy, scikit-learn wheels + budget's module

log=$(mktemp)
pylog=$(mktemp)
trap 'rm -f "$log" "$pylog"' EXIT

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "portability: clippy for macOS, Windows and aarch64 Linux, the facade's features, the MSRV"
scripts/check-targets.sh

step "cargo test (unit, integration, doc tests)"
# The cdylib that tests/two_copies.rs loads twice (two copies of budget-core in one process).
cargo build -p budget-copy
cargo test --workspace --all-features 2>&1 | tee -a "$log"

step "loom models of the token protocol (--cfg budget_loom)"
RUSTFLAGS="--cfg budget_loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p budget-threads-core --lib --release loom -- --test-threads=1 2>&1 | tee -a "$log"

step "Miri (nightly) over budget-core's unsafe: its unit tests and tests/miri.rs"
# The nightly toolchain with Miri, installed by rustup when missing (no update else).
# MIRI_TOOLCHAIN picks another (a dated nightly that has Miri, should today's break).
miri=${MIRI_TOOLCHAIN:-nightly}
if ! cargo "+$miri" miri --version >/dev/null 2>&1; then
  rustup toolchain list | grep -q "^$miri" || rustup toolchain install "$miri" --profile minimal
  rustup component add miri rust-src --toolchain "$miri"
fi
# Isolated (file reads fail, and budget falls back as it does without cgroup files),
# 2 CPUs (so regions have helpers), worker threads left running at exit allowed. Tests
# that call into C (locks, pipes) or measure time say "ignored" under Miri. Tree
# Borrows: `join`'s deques (crossbeam-deque) pin crossbeam-epoch, whose intrusive list
# breaks Stacked Borrows' rules but not Tree Borrows' (crossbeam's own Miri runs use
# it: crossbeam-rs/crossbeam#545, #996).
MIRIFLAGS="-Zmiri-isolation-error=warn-nobacktrace -Zmiri-num-cpus=2 -Zmiri-ignore-leaks -Zmiri-tree-borrows" \
  cargo "+$miri" miri test -p budget-threads-core --lib --test miri 2>&1 \
  | grep -v '^warning: operation rejected by isolation' | tee -a "$log"

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

step "cargo publish --dry-run: each published package builds from what it ships"
# Needs the crates.io index (as the build does); uploads nothing. The packages keep
# their versions from one run to the next, and cargo takes a registry crate of a
# known version as unchanged: so a target directory of its own, without the builds
# of budget's packages from an earlier dry run (the dependencies' builds stay)...
pubdir=target/publish-check
rm -rf "$pubdir/package" "$pubdir"/debug/.fingerprint/budget-threads* "$pubdir"/debug/deps/*budget*
# ...and without the sources it unpacked from those packages (never unpacked again
# otherwise).
rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/budget-threads*
CARGO_TARGET_DIR="$pubdir" cargo publish --workspace --dry-run --allow-dirty 2>&1 \
  | { grep -Ev '^(warning: ignoring|\s+(Compiling|Downloaded|Locking|Adding|Blocking))' || true; }

step "budget-py (the Python module, its own workspace): cargo fmt and clippy"
cargo fmt --manifest-path crates/budget-py/Cargo.toml -- --check
cargo clippy --manifest-path crates/budget-py/Cargo.toml --all-targets -- -D warnings

step "budget-py wheel: manylinux2014 (glibc 2.17) build, auditwheel check, install and import in a fresh venv"
# scripts/build-wheel.sh: the wheel README.md's install lines use (target/wheels/);
# any failure (maturin's or auditwheel's check, the smoke import) fails the suite here.
# The joblib backend is run from the installed wheel too (scripts/wheel_smoke.py).
BUILD_WHEEL_SMOKE=scripts/wheel_smoke.py BUILD_WHEEL_SMOKE_PIP="joblib==${JOBLIB_VERSION:-1.6.0}" \
  scripts/build-wheel.sh

step "pytest: tests/python and the budget package's doctests"
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider tests/python crates/budget-py/python/budget \
  --doctest-modules 2>&1 | tee "$pylog"
pyrc=${PIPESTATUS[0]}
set -e
# pytest's closing line: "3 failed, 20 passed, 1 error in 5.1s" (any order, any subset).
pysummary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|errors?)' "$pylog" | tail -n 1 || true)
py_passed=$(echo "$pysummary" | { grep -Eo '[0-9]+ passed' || true; } | awk '{s+=$1} END {print s+0}')
py_failed=$(echo "$pysummary" | { grep -Eo '[0-9]+ (failed|errors?)' || true; } | awk '{s+=$1} END {print s+0}')
if [ "$pyrc" -ne 0 ] && [ "$py_failed" -eq 0 ]; then
  echo "pytest exited with status $pyrc without a failure count (crash, no test collected, or interrupted): counted as one failure" >&2
  py_failed=1
fi
if [ "$py_passed" -eq 0 ]; then
  echo "pytest ran no test: that is a failure" >&2
  py_failed=$((py_failed > 0 ? py_failed : 1))
fi

passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
if [ "$passed" -eq 0 ]; then
  echo "no test ran: that is a failure" >&2
  exit 1
fi
passed=$((passed + py_passed))
failed=$((failed + py_failed))
printf '\n%s passed, %s failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]

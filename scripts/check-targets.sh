#!/usr/bin/env bash
# Portability: what a library that depends on budget needs to build wherever rayon
# builds. For Linux, macOS and Windows on x86-64 and aarch64: `cargo clippy` of every
# target of the workspace (tests, benches, examples included) with warnings as errors,
# the facade's feature combinations on one target per OS, and the declared MSRV
# (`rust-version`) building the libraries, the CLI and the Python module.
#
# A check needs no linker or SDK. Targets and the MSRV toolchain are installed with
# rustup when missing; if one cannot be installed this fails loudly (a skipped check
# is not a passing one). Runtime beyond Linux cannot be run here (README, platforms).
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(
  x86_64-apple-darwin
  aarch64-apple-darwin
  x86_64-pc-windows-msvc
  x86_64-pc-windows-gnu
  aarch64-unknown-linux-gnu
)
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
[ -n "$msrv" ] || { echo "check-targets: no rust-version in Cargo.toml" >&2; exit 1; }

installed=$(rustup target list --installed)
missing=()
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "check-targets: rustup target add ${missing[*]}"
  rustup target add "${missing[@]}"
fi

for t in "${targets[@]}"; do
  echo "check-targets: clippy, every target of the workspace, for $t"
  cargo clippy --quiet --workspace --all-targets --all-features --target "$t" -- -D warnings
done

for t in x86_64-unknown-linux-gnu x86_64-apple-darwin x86_64-pc-windows-msvc; do
  for features in "--no-default-features" "--no-default-features --features rayon" \
    "--no-default-features --features native"; do
    echo "check-targets: clippy -p budget-threads $features for $t"
    # shellcheck disable=SC2086
    cargo clippy --quiet -p budget-threads --all-targets --target "$t" $features -- -D warnings
  done
done

if ! rustup run "$msrv" rustc --version >/dev/null 2>&1; then
  echo "check-targets: rustup toolchain install $msrv (the declared MSRV)"
  rustup toolchain install "$msrv" --profile minimal
fi
echo "check-targets: the MSRV $msrv builds the libraries and the CLI"
CARGO_TARGET_DIR=target/msrv cargo "+$msrv" check --quiet --workspace
echo "check-targets: the MSRV $msrv builds the Python module"
CARGO_TARGET_DIR=target/msrv cargo "+$msrv" check --quiet --manifest-path crates/budget-py/Cargo.toml
echo "check-targets: all passed (${#targets[@]} targets, 9 feature combinations, MSRV $msrv)"

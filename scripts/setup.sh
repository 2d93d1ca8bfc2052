#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian machine (as root, or
# with sudo). Idempotent: a machine that has everything does nothing but check.
set -euo pipefail

need_apt=()
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v make >/dev/null 2>&1 || need_apt+=(make)   # the jobserver tests run under GNU make

. "$(dirname "$0")/apt.sh"
apt_install setup ${need_apt[@]+"${need_apt[@]}"}

command -v cargo >/dev/null 2>&1 || {
  echo "setup: cargo is missing: install a Rust toolchain (https://rustup.rs) first" >&2
  exit 1
}

#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian machine (as root, or
# with sudo). Idempotent: a machine that has everything does nothing but check.
set -euo pipefail

need_apt=()
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)

if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing ${need_apt[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

command -v cargo >/dev/null 2>&1 || {
  echo "setup: cargo is missing: install a Rust toolchain (https://rustup.rs) first" >&2
  exit 1
}

#!/usr/bin/env bash
# Builds the release wheel of budget's Python module (crates/budget-py, distribution
# `budget-threads`, imported as `budget`) that users install, checks it, and installs it
# into a throwaway virtual environment to import it there:
#
#   scripts/build-wheel.sh
#   pip install target/wheels/budget_threads-*.whl
#
# - The wheel goes to target/wheels/ at the repository root, whatever CARGO_TARGET_DIR
#   says (maturin's --out); older budget_threads-*.whl there are removed first, so the
#   glob above names exactly one file.
# - It runs on glibc 2.17 and later (manylinux2014, tag manylinux_2_17_<arch>): built
#   with `maturin build --release --compatibility manylinux2014 --zig`, which links
#   against glibc 2.17's symbol versions with zig (the `ziglang` package, installed into
#   .venv here when missing) whatever glibc this machine has. A plain build here links
#   against the host's glibc (2.36: GLIBC_2.34 symbols) and maturin refuses it. maturin
#   checks the symbols it links (its auditwheel check, a failure fails the build), and
#   `auditwheel show` (the `auditwheel` package, installed into .venv here when missing)
#   must find the wheel consistent with manylinux_2_17 or older for this machine's
#   architecture, or the script fails.
# - cargo builds in $CARGO_TARGET_DIR/wheel-zig (default target/wheel-zig): zig's linker
#   settings would otherwise rebuild everything that `maturin develop`
#   (scripts/setup-python.sh) built in crates/budget-py/target, and back again.
# - The smoke check: a new virtual environment in a temporary directory (the host's
#   python3), `pip install --no-index` of the wheel (it has no dependencies), then, from
#   that directory and with `python -I` (no checkout sources on sys.path), `import
#   budget`: a region of width >= 1, `budget.__file__` inside that environment, and
#   `budget.stats()["total"]`.
#
# Environment:
#   BUILD_WHEEL_SMOKE=FILE.py        also run this Python file in the throwaway
#                                    environment (python -I, from the temporary
#                                    directory); a relative path is taken from the
#                                    directory the script was started in. Its failure
#                                    fails the script.
#   BUILD_WHEEL_SMOKE_PIP="REQ ..."  pip requirements (e.g. "joblib==1.6.0") installed
#                                    into the throwaway environment before FILE.py runs
#                                    (from PyPI / pip's cache).
#   ZIGLANG_VERSION, AUDITWHEEL_VERSION, MATURIN_VERSION override the pins below
#   (MATURIN_VERSION is scripts/setup-python.sh's).
#
# Needs .venv (scripts/setup-python.sh, run here when .venv/bin/maturin is missing) and
# PyPI for ziglang and auditwheel the first time. Ends with the wheel's path and its
# platform tag.
set -euo pipefail
caller_pwd=$PWD
cd "$(dirname "$0")/.."
root=$(pwd)

tools=(
  "ziglang==${ZIGLANG_VERSION:-0.15.2}"
  "auditwheel==${AUDITWHEEL_VERSION:-6.8.2}"
)

abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$caller_pwd/$1" ;; esac; }

venv="$root/.venv"
py="$venv/bin/python"
out="$root/target/wheels"
build_dir="$(abspath "${CARGO_TARGET_DIR:-$root/target}")/wheel-zig"
smoke_file=""
if [ -n "${BUILD_WHEEL_SMOKE:-}" ]; then
  smoke_file=$(abspath "$BUILD_WHEEL_SMOKE")
  [ -f "$smoke_file" ] || { echo "build-wheel: BUILD_WHEEL_SMOKE=$BUILD_WHEEL_SMOKE: no such file" >&2; exit 1; }
fi

if [ ! -x "$venv/bin/maturin" ]; then
  scripts/setup-python.sh
fi

# ziglang and auditwheel into .venv, only when missing or at another version.
missing=$("$py" - "${tools[@]}" <<'EOF'
import sys
from importlib import metadata
for spec in sys.argv[1:]:
    name, version = spec.split("==")
    try:
        ok = metadata.version(name) == version
    except metadata.PackageNotFoundError:
        ok = False
    if not ok:
        print(spec)
EOF
)
if [ -n "$missing" ]; then
  echo "build-wheel: installing" $missing "into .venv"
  # shellcheck disable=SC2086 # one requirement a word
  "$py" -m pip install -q --disable-pip-version-check --only-binary=:all: $missing
fi

echo "build-wheel: maturin build --release --compatibility manylinux2014 --zig (cargo in $build_dir)"
mkdir -p "$out"
rm -f "$out"/budget_threads-*.whl
(
  cd crates/budget-py
  # maturin finds zig as `python3 -m ziglang`: .venv's python3, with the pinned ziglang.
  PATH="$venv/bin:$PATH" CARGO_ZIGBUILD_PYTHON_PATH="$py" CARGO_TARGET_DIR="$build_dir" \
    CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" \
    "$venv/bin/maturin" build --release --compatibility manylinux2014 --zig \
    --interpreter "$py" --out "$out"
)

shopt -s nullglob
wheels=("$out"/budget_threads-*.whl)
shopt -u nullglob
if [ "${#wheels[@]}" -ne 1 ]; then
  echo "build-wheel: expected one budget_threads-*.whl in $out, found ${#wheels[@]}" >&2
  exit 1
fi
wheel=${wheels[0]}
# name-version-python-abi-platform.whl
platform=$(basename "$wheel" .whl | cut -d- -f5-)
arch=$(uname -m)

echo "build-wheel: auditwheel show"
audit=$("$venv/bin/auditwheel" show "$wheel")
printf '%s\n' "$audit"
# auditwheel wraps its text at spaces: join the lines again before reading the tag.
audit_tag=$(printf '%s\n' "$audit" | tr '\n' ' ' \
  | sed -nE 's/.*is consistent with the following platform tag: *"([^"]+)".*/\1/p')
glibc_minor=$(printf '%s\n' "$audit_tag" | sed -nE "s/^manylinux_2_([0-9]+)_${arch}\$/\1/p")
if [ -z "$glibc_minor" ] || [ "$glibc_minor" -gt 17 ]; then
  echo "build-wheel: auditwheel finds the wheel consistent with '${audit_tag:-?}', not manylinux_2_17_${arch} or older" >&2
  exit 1
fi
case ".$platform." in
  *".manylinux_2_17_${arch}."*) ;;
  *)
    echo "build-wheel: the wheel's platform tag $platform does not name manylinux_2_17_${arch}" >&2
    exit 1
    ;;
esac

echo "build-wheel: smoke check in a throwaway virtual environment"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
tpy="$tmp/venv/bin/python"
"$tpy" -m pip install -q --disable-pip-version-check --no-index "$wheel"
(
  cd "$tmp"
  env -u PYTHONPATH -u PYTHONHOME "$tpy" -I - "$tmp/venv" <<'EOF'
import os, sys
import budget

venv = os.path.realpath(sys.argv[1])
where = os.path.realpath(budget.__file__)
assert where.startswith(venv + os.sep), f"budget imported from {where}, not from {venv}"
with budget.region() as r:
    assert r.width >= 1, r
print("build-wheel: smoke:", budget.__file__, budget.stats()["total"])
EOF
  if [ -n "$smoke_file" ]; then
    if [ -n "${BUILD_WHEEL_SMOKE_PIP:-}" ]; then
      # shellcheck disable=SC2086 # one requirement a word
      "$tpy" -m pip install -q --disable-pip-version-check --only-binary=:all: $BUILD_WHEEL_SMOKE_PIP
    fi
    echo "build-wheel: running $smoke_file in the throwaway environment"
    env -u PYTHONPATH -u PYTHONHOME "$tpy" -I "$smoke_file"
  fi
)

echo "build-wheel: wheel $wheel"
echo "build-wheel: platform tag $platform (auditwheel: $audit_tag)"

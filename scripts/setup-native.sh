#!/usr/bin/env bash
# Installs the real OpenMP / BLAS libraries that the budget-native tests and benches load,
# and writes where each library file is to .cache/native/libs.env (KEY=/path lines) that
# the tests read. Idempotent: what is installed or cached already is only checked.
#
#   Debian packages: libopenblas0-pthread, libopenblas0-openmp, libblis4-pthread,
#                    libomp-dev, libgomp1
#   PyPI wheels (downloaded and unpacked once per machine in
#   ${BUDGET_CACHE_DIR:-~/.cache/budget}/native, so fresh clones such as CI's reuse
#   them; linked into .cache/native/lib):
#                    scipy-openblas64 (the OpenBLAS NumPy ships), intel-openmp (libiomp5),
#                    mkl (libmkl_rt)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cache="$root/.cache/native"
store="${BUDGET_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/budget}/native"
mkdir -p "$store/wheels" "$store/unpacked" "$cache/lib"

debs=(libopenblas0-pthread libopenblas0-openmp libblis4-pthread libomp-dev libgomp1)
python3 -m pip --version >/dev/null 2>&1 || debs+=(python3-pip)
missing=()
for p in "${debs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
. "$root/scripts/apt.sh"
apt_install setup-native ${missing[@]+"${missing[@]}"}

# The wheels, pinned (override with e.g. MKL_VERSION=...): downloaded once, unpacked once.
# scipy-openblas64 0.3.34.x is the OpenBLAS 0.3.34 that NumPy ships.
wheels=(
  "scipy-openblas64==${SCIPY_OPENBLAS64_VERSION:-0.3.34.481.3}"
  "intel-openmp==${INTEL_OPENMP_VERSION:-2026.2.0}"
  "mkl==${MKL_VERSION:-2026.2.0}"
)
for spec in "${wheels[@]}"; do
  w=${spec%%==*}
  version=${spec#*==}
  stem=${w//-/_}
  if ! ls "$store/wheels/${stem}-${version}-"*.whl >/dev/null 2>&1; then
    echo "setup-native: downloading the $spec wheel"
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$store/wheels" "$spec"
  fi
  whl=$(ls "$store/wheels/${stem}-${version}-"*.whl | head -n 1)
  dest="$store/unpacked/$(basename "$whl" .whl)"
  if [ ! -d "$dest" ]; then
    mkdir -p "$dest.tmp"
    python3 -m zipfile -e "$whl" "$dest.tmp"
    mv "$dest.tmp" "$dest"
  fi
  # Every shared object of the wheel into one folder, so that libmkl_rt finds its
  # layers and libiomp5 next to it ($ORIGIN), as in a Python environment's lib/.
  find "$dest" -name '*.so*' -type f -print0 | while IFS= read -r -d '' f; do
    ln -sfn "$f" "$cache/lib/$(basename "$f")"
  done
done

first() { # first existing file among the arguments
  for f in "$@"; do [ -e "$f" ] && { echo "$f"; return 0; }; done
  return 1
}
deb_file() { # package, file-name glob: the matching file that package installed
  dpkg -L "$1" | grep -E "/$2\$" | head -n 1
}

out="$cache/libs.env"
tmp="$out.tmp"
: >"$tmp"
put() {
  if [ -z "$2" ] || [ ! -e "$2" ]; then
    echo "setup-native: could not find the library for $1" >&2
    exit 1
  fi
  echo "$1=$2" >>"$tmp"
  printf 'setup-native: %-32s %s\n' "$1" "$2"
}
put BUDGET_NATIVE_OPENBLAS_PTHREAD "$(deb_file libopenblas0-pthread 'libopenblas\.so\.0')"
put BUDGET_NATIVE_OPENBLAS_OPENMP "$(deb_file libopenblas0-openmp 'libopenblas\.so\.0')"
put BUDGET_NATIVE_BLIS_PTHREAD "$(deb_file libblis4-pthread 'libblis\.so\.4')"
put BUDGET_NATIVE_GOMP "$(first /usr/lib/x86_64-linux-gnu/libgomp.so.1 /usr/lib/aarch64-linux-gnu/libgomp.so.1 "$(deb_file libgomp1 'libgomp\.so\.1')")"
llvm_omp=$(dpkg -S 'libomp.so.5' 2>/dev/null | grep -E '^libomp5' | head -n 1 | sed -E 's/^[^:]+(:[a-z0-9]+)?: //')
put BUDGET_NATIVE_LLVM_OMP "$llvm_omp"
put BUDGET_NATIVE_SCIPY_OPENBLAS64 "$(find "$cache/lib/" -name 'libscipy_openblas64_*.so' | head -n 1)"
put BUDGET_NATIVE_IOMP5 "$cache/lib/libiomp5.so"
put BUDGET_NATIVE_MKL_RT "$(find "$cache/lib/" -name 'libmkl_rt.so*' | sort | tail -n 1)"
mv "$tmp" "$out"
echo "setup-native: wrote $out"

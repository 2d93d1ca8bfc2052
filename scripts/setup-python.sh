#!/usr/bin/env bash
# Makes the Python environment the Python tests and examples use: a virtual environment
# at .venv in the repository with NumPy, SciPy, scikit-learn, threadpoolctl, joblib,
# pytest, mypy and maturin from PyPI (the wheels users have: NumPy's own OpenBLAS,
# scikit-learn's own libgomp), and budget's Python module (crates/budget-py,
# distribution `budget-threads`, imported as `budget`) built in release mode into it.
#
# Idempotent: an environment with the pinned versions is only checked, and the module is
# rebuilt only when its sources changed (cargo's incremental build decides). Wheels are
# cached by pip in ~/.cache/pip, so a fresh clone (CI's) reinstalls quickly.
# Override a pin with e.g. NUMPY_VERSION=2.3.5 scripts/setup-python.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

pins=(
  "maturin==${MATURIN_VERSION:-1.16.0}"
  "numpy==${NUMPY_VERSION:-2.4.6}"
  "scipy==${SCIPY_VERSION:-1.17.1}"
  "scikit-learn==${SKLEARN_VERSION:-1.9.1}"
  "threadpoolctl==${THREADPOOLCTL_VERSION:-3.8.0}"
  "joblib==${JOBLIB_VERSION:-1.6.0}"
  "pytest==${PYTEST_VERSION:-9.2.0}"
  "mypy==${MYPY_VERSION:-2.4.1}"
)

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  # Debian's python3 splits venv/ensurepip into a package of its own.
  . "$root/scripts/apt.sh"
  apt_install setup-python python3-venv
fi

venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup-python: creating $venv"
  python3 -m venv "$venv"
fi
py="$venv/bin/python"

# Install only what is missing or at another version (a check costs ~1 s).
stamp="$venv/.budget-pins"
if [ "$(cat "$stamp" 2>/dev/null)" != "${pins[*]}" ]; then
  echo "setup-python: installing ${pins[*]}"
  "$py" -m pip install -q --disable-pip-version-check --only-binary=:all: "${pins[@]}"
  echo "${pins[*]}" >"$stamp"
fi

# The module, in release mode, into the environment (editable: the package's Python
# sources are used from crates/budget-py/python, the native part is rebuilt here).
echo "setup-python: building budget's Python module (maturin develop --release)"
(
  cd crates/budget-py
  VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" \
    "$venv/bin/maturin" develop --release --quiet
)
"$py" -c 'import budget, sys; print("setup-python: budget", budget.__version__, "imported from", budget.__file__, "with", budget.stats()["total"], "cores")'

"""Shared setup of the Python tests (run by scripts/test.sh through .venv's pytest).

The budget's total is fixed at first use. The machine has 2 cores; tests that need a
budget larger than 2 (widths that shrink across threads, racing counts) get one from
BUDGET_NUM_THREADS, set here before anything imports budget (and passed to child
processes). Everything that could hang has a watchdog: in-process tests run under
faulthandler's timer, which prints every thread's stack and exits; child processes
run under a timeout.
"""

import faulthandler
import os
import subprocess
import sys
import textwrap
import time

os.environ["BUDGET_NUM_THREADS"] = "8"
TOTAL = 8

import pytest  # noqa: E402

WATCHDOG_S = 240
# The real stderr, duplicated before pytest captures it: a watchdog that fires prints
# there, not into a capture buffer that dies with the process.
_REAL_STDERR = os.fdopen(os.dup(2), "w")


@pytest.fixture(autouse=True)
def watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True, file=_REAL_STDERR)
    yield
    faulthandler.cancel_dump_traceback_later()


def run_python(code, *, env=None, timeout=60):
    """Runs `code` in a fresh interpreter of this environment; returns the completed
    process (stdout/stderr as text). A run past `timeout` is killed and reported with
    returncode None."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(e.cmd, None, e.stdout or "", e.stderr or "")


def settle(budget, timeout=10.0):
    """Waits until no token is held (threads of earlier tests may still be leaving
    their regions) and returns the stats; fails if it never happens."""
    deadline = time.monotonic() + timeout
    while True:
        s = budget.stats()
        if s["in_use"] == 0:
            return s
        if time.monotonic() > deadline:
            pytest.fail(f"tokens still held after {timeout} s: {s}")
        time.sleep(0.01)


def eventually(check, timeout=10.0, what=""):
    """Polls `check()` until it is true; fails with `what` (and the stats) if it is
    still false after `timeout` seconds (a generous bound for a loaded machine)."""
    import budget

    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {timeout} s: {what} {budget.stats()}")
        time.sleep(0.002)


def in_use_is(n):
    """Waits until exactly `n` tokens are held."""
    import budget

    eventually(lambda: budget.stats()["in_use"] == n, what=f"in_use == {n}")
    return True


def native_counts():
    """{filepath: num_threads} of every BLAS/OpenMP library, as threadpoolctl reads
    them on the calling thread (threadpoolctl is the independent witness here)."""
    import threadpoolctl

    return {
        lib["filepath"]: lib["num_threads"]
        for lib in threadpoolctl.threadpool_info()
        if lib["user_api"] in ("blas", "openmp")
    }


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def user_env(**extra):
    """The environment of a user's fresh process: this one's, without what the test
    session sets for itself (BUDGET_NUM_THREADS) and without any variable that tunes
    OpenBLAS or OpenMP threads (the user's, never set by budget's tests), plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "BUDGET_NUM_THREADS"
        and not k.startswith(("OPENBLAS_", "GOTO_", "OMP_", "GOMP_", "KMP_", "BUDGET_NODE"))
        and k not in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS")
    }
    env.update(extra)
    return env


def budget_cli():
    """The `budget` command of this checkout (built by the cargo tests that run before
    pytest; built here if it is missing)."""
    path = os.environ.get("BUDGET_CLI") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "debug", "budget"
    )
    if not os.path.exists(path):
        subprocess.run(
            ["cargo", "build", "-q", "-p", "budget-cli", "--bin", "budget"], cwd=ROOT, check=True
        )
    return path

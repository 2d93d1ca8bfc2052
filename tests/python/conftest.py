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
# OpenBLAS's pthreads workers busy-wait for 2^OPENBLAS_THREAD_TIMEOUT cycles after a
# wide call, and budget-native counts them against the budget meanwhile (its spin
# lease, released by a reaper thread). Token counts asserted right after a block
# exits would see that lease: the smallest window (read by OpenBLAS at load, so set
# before NumPy is imported) keeps it to the reaper's next tick, and assertions on
# counts poll with `eventually`.
os.environ["OPENBLAS_THREAD_TIMEOUT"] = "4"

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
    """Waits until no token is held (OpenBLAS's spin lease ends ~0.1 s after a wide
    call) and returns the stats; fails if it never happens."""
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
    """Waits until exactly `n` tokens are held (spin leases drained)."""
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

"""Run by scripts/test.sh (through scripts/build-wheel.sh, BUILD_WHEEL_SMOKE) in the
fresh venv the wheel was installed into: the joblib backend, in threads and in loky
processes, from the installed wheel. Outside tests/python: pytest would import it."""

import os

import budget
import joblib

assert "site-packages" in budget.__file__, budget.__file__


def task(i):
    import budget._joblib as bj

    return os.getpid(), budget.joined()["kind"], bj.region_width()


with joblib.parallel_config(backend="budget"):
    procs = joblib.Parallel(n_jobs=2)(joblib.delayed(task)(i) for i in range(4))
with joblib.parallel_config(backend="budget", prefer="threads"):
    threads = joblib.Parallel(n_jobs=2)(joblib.delayed(task)(i) for i in range(4))
assert all(pid != os.getpid() and kind == "node" and w >= 1 for pid, kind, w in procs), procs
assert all(pid == os.getpid() and w >= 1 for pid, _, w in threads), threads
print("wheel smoke: joblib backend ran", len(procs), "tasks in workers and", len(threads), "in threads")

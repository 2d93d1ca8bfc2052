"""A forked child computes with NumPy inside regions. scikit-learn's libgomp cannot
re-create its thread team in a forked child (a parallel region of more than one thread
there never finishes, once the parent ran one): a child that inherited a libgomp runs
its OpenMP, and its regions, at width 1."""

from conftest import TOTAL, run_python

CHILD = """
import os, sys, time
import numpy as np
import budget
{imports}
{parent_work}
pid = os.fork()
if pid == 0:
    code = 1
    try:
        with budget.region() as r:
            a = np.arange(90000.0).reshape(300, 300) / 1e4
            ok = np.allclose(a @ a, np.dot(a, a.copy()))
            omp = [l["num_threads"] for l in budget.threadpool_info() if l["user_api"] == "openmp"]
            {child_work}
            print("child", r.width, omp, ok, flush=True)
        s = budget.stats()
        code = 0 if ok and s["in_use"] == 0 else 2
    finally:
        os._exit(code)
deadline = time.monotonic() + 60
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("exit", os.waitstatus_to_exitcode(status))
        break
    if time.monotonic() > deadline:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print("child hung")
        break
    time.sleep(0.02)
"""

SKLEARN = """
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier
X, y = make_classification(n_samples=1000, n_features=8, random_state=0)
"""


def test_forked_child_with_numpy_keeps_the_budget():
    r = run_python(CHILD.format(imports="", parent_work="np.ones((200, 200)) @ np.ones((200, 200))", child_work=""), timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"child {TOTAL} [] True" in r.stdout, r.stdout
    assert "exit 0" in r.stdout


def test_forked_child_after_libgomp_ran_a_team_runs_openmp_at_width_1():
    r = run_python(
        CHILD.format(
            imports=SKLEARN,
            # The parent runs OpenMP teams (histogram building) before the fork.
            parent_work="HistGradientBoostingClassifier(max_iter=3).fit(X, y)",
            # Without budget this fit never finishes in the child (measured by hand:
            # the same script without `import budget` is killed at the deadline).
            child_work="HistGradientBoostingClassifier(max_iter=3).fit(X, y)",
        ),
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    assert "child 1 [1] True" in r.stdout, r.stdout
    assert "exit 0" in r.stdout, r.stdout


def test_fork_pool_workers_compute_in_regions():
    r = run_python(
        """
        import multiprocessing as mp
        import numpy as np
        import budget

        def work(i):
            with budget.region() as r:
                a = np.full((128, 128), float(i))
                return float((a @ a)[0, 0]), r.width

        if __name__ == "__main__":
            with mp.get_context("fork").Pool(2) as pool:
                out = pool.map(work, range(6))
            assert [v for v, _ in out] == [128.0 * i * i for i in range(6)], out
            assert all(1 <= w <= budget.stats()["total"] for _, w in out), out
            print("ok")
        """,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout

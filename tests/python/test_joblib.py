"""The joblib backend "budget": tasks in regions, in threads and in loky workers that
share one node budget; nested Parallel sized by the enclosing region; errors,
cancellation, scikit-learn under it, and no node file left behind.

Process tests run in a fresh interpreter with a budget of 2 (this session's is 8) and a
private runtime directory, whose node files they count after the interpreter exits.
"""

import json
import os
import threading
import time

import pytest

from conftest import run_python, settle

joblib = pytest.importorskip("joblib")


def test_import_budget_registers_the_backend_without_importing_joblib():
    out = run_python(
        """
        import sys, time
        t = time.perf_counter()
        import budget
        ms = (time.perf_counter() - t) * 1e3
        print("joblib" in sys.modules, round(ms))
        import joblib.parallel
        print("budget" in joblib.parallel.BACKENDS)
        """
    )
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.split("\n")[:2]
    imported, ms = first.split()
    assert imported == "False", out.stdout
    assert second == "True", out.stdout
    print(f"import budget: {ms} ms")
    # Importing the backend's module first (it imports joblib) registers it too.
    out = run_python(
        """
        import budget._joblib, joblib.parallel
        print("budget" in joblib.parallel.BACKENDS)
        """
    )
    assert out.returncode == 0 and out.stdout.strip() == "True", (out.stdout, out.stderr)


def task(i, pause=0.05):
    import budget._joblib as bj

    time.sleep(pause)
    return {
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "width": bj.region_width(),
        "n_jobs": joblib.effective_n_jobs(-1),
    }


@pytest.mark.parametrize("hint", [{"prefer": "threads"}, {"require": "sharedmem"}])
def test_threads_run_each_task_in_a_region(hint):
    import budget

    settle(budget)
    before = budget.stats()["regions"]
    with joblib.parallel_config(backend="budget", **hint):
        out = joblib.Parallel(n_jobs=3)(joblib.delayed(task)(i) for i in range(9))
    assert {o["pid"] for o in out} == {os.getpid()}
    assert len({o["thread"] for o in out}) > 1, out
    assert all(o["width"] is not None and 1 <= o["width"] <= 8 for o in out), out
    # A nested Parallel inside a task is no wider than the task's region.
    assert all(o["n_jobs"] == o["width"] for o in out), out
    assert budget.stats()["regions"] >= before + 9
    assert settle(budget)["in_use"] == 0


def nested(i):
    import budget._joblib as bj

    outer = bj.region_width()
    inner = joblib.Parallel(n_jobs=-1)(joblib.delayed(task)(j, 0.01) for j in range(4))
    return outer, joblib.effective_n_jobs(-1), [o["width"] for o in inner], len(
        {o["thread"] for o in inner}
    )


def test_a_nested_parallel_takes_its_n_jobs_from_the_enclosing_region():
    import budget

    with joblib.parallel_config(backend="budget", prefer="threads"):
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(nested)(i) for i in range(4))
    for outer, n_jobs, inner_widths, inner_threads in out:
        assert n_jobs == outer, out
        assert inner_threads <= outer, out
        assert all(w is not None and w >= 1 for w in inner_widths), out
    assert settle(budget)["in_use"] == 0


def boom(i, ran):
    if i == 0:
        raise ValueError("task 0 failed")
    time.sleep(0.05)
    ran.append(i)
    return i


def test_a_task_that_raises_cancels_the_rest_and_gives_tokens_back():
    import budget

    ran = []
    with joblib.parallel_config(backend="budget", prefer="threads"):
        with pytest.raises(ValueError, match="task 0 failed"):
            joblib.Parallel(n_jobs=2, batch_size=1)(
                joblib.delayed(boom)(i, ran) for i in range(40)
            )
    assert len(ran) < 39, f"{len(ran)} of 39 tasks ran after the failure"
    assert settle(budget)["in_use"] == 0
    # The tasks dropped from the queue no longer count as in flight: the next call's
    # tasks are sized by what really runs.
    import budget._joblib as bj

    assert bj._THREADS_IN_FLIGHT.value() == 0


PROCESSES = """
import json, os, sys, time
import joblib, budget
import budget._joblib as bj

def task(i, pause):
    time.sleep(pause)
    return {"pid": os.getpid(), "width": bj.region_width(),
            "kind": budget.joined()["kind"], "node": os.environ.get("BUDGET_NODE"),
            "n_jobs": joblib.effective_n_jobs(-1),
            "blas": [l["num_threads"] for l in budget.threadpool_info()
                     if l["user_api"] == "blas"]}

config = json.loads(sys.argv[1])
import numpy  # its OpenBLAS, for the widths the tasks' BLAS gets
out = {"parent": os.getpid()}
with joblib.parallel_config(backend="budget", **config):
    out["busy"] = joblib.Parallel(n_jobs=2)(joblib.delayed(task)(i, 0.3) for i in range(4))
    # The other worker's tokens linger a few ms after its last task, then go back.
    time.sleep(0.2)
    out["alone"] = joblib.Parallel(n_jobs=2)(joblib.delayed(task)(0, 0.0) for _ in range(1))
out["parent_kind"] = budget.joined()["kind"]
print(json.dumps(out))
"""


def run_child(code, tmp_path, timeout):
    """Runs `code` in a fresh interpreter with a budget of 2 and a private runtime
    directory; returns the JSON its last line printed."""
    os.chmod(tmp_path, 0o700)
    r = run_python(
        code,
        env={"BUDGET_NUM_THREADS": "2", "XDG_RUNTIME_DIR": str(tmp_path)},
        timeout=timeout,
    )
    assert r.returncode == 0, (r.stdout, r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_processes(tmp_path, **config):
    code = PROCESSES.replace("sys.argv[1]", repr(json.dumps(config)))
    out = run_child(code, tmp_path, timeout=120)
    directory = tmp_path / "budget"
    left = sorted(os.listdir(directory)) if directory.is_dir() else []
    return out, [f for f in left if f.endswith((".node", ".busy"))]


@pytest.mark.parametrize("method", ["loky", "spawn", "forkserver", "loky_init_main"])
def test_loky_workers_share_one_node_budget_and_leave_no_file(tmp_path, method):
    out, left = run_processes(tmp_path, context=method)
    busy, alone = out["busy"], out["alone"]
    tasks = busy + alone
    assert all(t["pid"] != out["parent"] for t in tasks), out
    assert {t["kind"] for t in tasks} == {"node"}, out
    nodes = {t["node"] for t in tasks}
    assert len(nodes) == 1 and str(tmp_path) in nodes.pop(), out
    # Two workers busy at once on a node of 2: one core each, once both run.
    assert all(1 <= t["width"] <= 2 for t in busy), out
    assert sum(t["width"] == 1 for t in busy) >= 2, out
    assert all(t["blas"] == [t["width"]] for t in tasks), out
    # A task alone at the end widens to the whole node, and its BLAS with it.
    assert alone[0]["width"] == 2 and alone[0]["blas"] == [2], out
    assert out["parent_kind"] == "local", out
    assert left == [], f"node files left behind: {left}"


def test_inner_max_num_threads_caps_the_workers(tmp_path):
    out, left = run_processes(tmp_path, inner_max_num_threads=1)
    assert all(t["blas"] == [1] for t in out["busy"] + out["alone"]), out
    assert left == []


SKLEARN = """
import json
import numpy as np
import joblib, budget
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.model_selection import GridSearchCV

X, _ = make_blobs(n_samples=600, centers=3, random_state=0)
def search():
    g = GridSearchCV(KMeans(n_init=2, random_state=0), {"n_clusters": [2, 3, 4]}, cv=2, n_jobs=2)
    g.fit(X)
    return g.best_params_, [round(s, 6) for s in g.cv_results_["mean_test_score"]]
plain = search()
with joblib.parallel_config(backend="budget"):
    ours = search()
with joblib.parallel_config(backend="budget", prefer="threads"):
    threads = search()
# A task that raises in a worker: the error reaches the caller, the next call works.
def fail(i):
    if i == 1:
        raise KeyError("worker task failed")
    return i
with joblib.parallel_config(backend="budget"):
    try:
        joblib.Parallel(n_jobs=2)(joblib.delayed(fail)(i) for i in range(4))
        error = None
    except KeyError as e:
        error = str(e)
    after = joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-i) for i in range(4))
print(json.dumps({"plain": plain, "budget": ours, "threads": threads, "error": error,
                  "after": after}))
"""


def test_scikit_learn_under_the_backend_gives_the_same_results(tmp_path):
    out = run_child(SKLEARN, tmp_path, timeout=180)
    assert out["budget"] == out["plain"], out
    assert out["threads"] == out["plain"], out
    assert out["error"] == "'worker task failed'", out
    assert out["after"] == [0, 1, 2, 3], out
    assert not list((tmp_path / "budget").glob("*.node"))
    assert not list((tmp_path / "budget").glob("*.busy"))

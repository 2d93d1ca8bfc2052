"""budget.threadpool_info() agrees with threadpoolctl.threadpool_info(), and budget is
listed by threadpoolctl as a controller of its own."""

import numpy  # noqa: F401  (NumPy's OpenBLAS)
import scipy.linalg  # noqa: F401  (SciPy's OpenBLAS)
import sklearn.ensemble  # noqa: F401  (scikit-learn's libgomp)
import threadpoolctl

import budget
from conftest import TOTAL, run_python

KEYS = {"user_api", "internal_api", "prefix", "filepath", "version", "num_threads"}


def by_path(infos):
    return {lib["filepath"]: lib for lib in infos}


def test_same_libraries_and_values_as_threadpoolctl():
    theirs = [lib for lib in threadpoolctl.threadpool_info() if lib["user_api"] in ("blas", "openmp")]
    ours = budget.threadpool_info()
    # NumPy's OpenBLAS, SciPy's OpenBLAS and scikit-learn's libgomp at least.
    assert {lib["internal_api"] for lib in theirs} >= {"openblas", "openmp"}
    assert len([lib for lib in theirs if lib["internal_api"] == "openblas"]) >= 2
    assert by_path(ours) == by_path(theirs)
    for lib in ours:
        assert KEYS <= lib.keys()
        if lib["internal_api"] == "openblas":
            assert lib["threading_layer"] in ("pthreads", "openmp", "disabled")
            assert lib["architecture"]


def test_values_follow_a_limit():
    with budget.limit(1):
        assert all(lib["num_threads"] == 1 for lib in budget.threadpool_info())
        assert by_path(budget.threadpool_info()) == by_path(
            lib for lib in threadpoolctl.threadpool_info() if lib["user_api"] != "budget"
        )


def test_budget_is_a_threadpoolctl_controller():
    entries = [lib for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "budget"]
    assert len(entries) == 1
    (entry,) = entries
    assert entry["internal_api"] == "budget"
    assert entry["num_threads"] == TOTAL == budget.stats()["total"]
    assert entry["version"] == budget.__version__


def test_libraries_loaded_later_are_found():
    r = run_python(
        """
        import budget, threadpoolctl
        before = {l["internal_api"] for l in budget.threadpool_info()}
        import numpy, sklearn.ensemble
        after = budget.threadpool_info()
        theirs = [l for l in threadpoolctl.threadpool_info() if l["user_api"] != "budget"]
        assert not before & {"openblas", "openmp"}, before
        key = lambda l: l["filepath"]
        assert sorted(after, key=key) == sorted(theirs, key=key), (after, theirs)
        print("ok", len(after))
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")

"""budget.region(): widths from the budget across Python threads, libraries set to the
width, tokens and counts back at exit in any order, on the right thread only, capped
by threadpoolctl, and scikit-learn's own threadpoolctl calls beside it."""

import asyncio
import threading

import numpy as np
import pytest
import sklearn.cluster
import sklearn.datasets
import threadpoolctl

import budget
from conftest import TOTAL, in_use_is, native_counts, settle


def gomp_count():
    (n,) = {n for p, n in native_counts().items() if "gomp" in p}
    return n


def blas_counts():
    return {n for p, n in native_counts().items() if "openblas" in p}


def test_alone_a_region_gets_the_whole_budget():
    s0 = settle(budget)
    with budget.region() as r:
        assert r.width == r.requested == TOTAL
        assert in_use_is(TOTAL)
        assert gomp_count() == TOTAL
        assert blas_counts() == {TOTAL}
    s1 = settle(budget)
    assert s1["regions"] == s0["regions"] + 1
    with budget.region(3) as r:
        assert (r.width, r.requested, r.max_threads) == (3, 3, 3)
    assert budget._budget.depth() == 0


class Holder(threading.Thread):
    """A thread that opens a region, reports its width and the OpenMP count it sees,
    and holds the region until told to leave."""

    def __init__(self, max_threads=None):
        super().__init__(daemon=True)
        self.max_threads = max_threads
        self.entered = threading.Event()
        self.leave = threading.Event()
        self.width = self.gomp = None

    def run(self):
        with budget.region(self.max_threads) as r:
            self.width, self.gomp = r.width, gomp_count()
            self.entered.set()
            assert self.leave.wait(60)

    def open(self):
        self.start()
        assert self.entered.wait(60)
        return self

    def close(self):
        self.leave.set()
        self.join(60)
        assert not self.is_alive()


def test_widths_shrink_across_threads_and_come_back():
    s0 = settle(budget)
    a = Holder(5).open()
    assert (a.width, a.gomp) == (5, 5)
    b = Holder().open()
    assert (b.width, b.gomp) == (TOTAL - 5, TOTAL - 5)
    assert in_use_is(TOTAL)
    # No token left: the thread still runs, at width 1, counted as overcommit.
    c = Holder().open()
    assert (c.width, c.gomp) == (1, 1)
    assert budget.stats()["overcommit"] == s0["overcommit"] + 1
    assert in_use_is(TOTAL)
    b.close()
    # b's tokens go back; the first pays c's own token (owed since c overcommitted).
    assert in_use_is(6)
    d = Holder().open()
    assert d.width == TOTAL - 6
    for h in (a, c, d):
        h.close()
    s1 = settle(budget)
    assert s1["grants_below_request"] >= s0["grants_below_request"] + 3
    e = Holder().open()
    assert e.width == TOTAL
    e.close()
    settle(budget)


def test_an_overcommitted_thread_is_paid_before_a_new_region_takes():
    """A thread whose region found no token free runs anyway (width 1) and owes its
    own token: the next release pays it before a region opened later takes it, so two
    threads that run one region after another (fits in a cross-validation loop) end up
    sharing the cores instead of the faster one taking them all again each time."""
    settle(budget)
    a = Holder().open()
    assert a.width == TOTAL
    b = Holder().open()  # nothing free: runs at width 1, unpaid
    assert b.width == 1
    assert in_use_is(TOTAL)
    a.close()  # TOTAL tokens back: one pays b's thread
    assert in_use_is(1)
    a2 = Holder().open()
    assert a2.width == TOTAL - 1
    assert in_use_is(TOTAL)
    for h in (b, a2):
        h.close()
    settle(budget)


def test_exception_in_a_region_restores_everything():
    before = native_counts()
    with pytest.raises(KeyError):
        with budget.region() as r:
            assert r.width == TOTAL
            raise KeyError("boom")
    assert native_counts() == before
    settle(budget)
    assert budget._budget.depth() == 0


def test_generators_exiting_out_of_order():
    settle(budget)
    before = native_counts()

    def block(make):
        with make() as r:
            yield r

    g1 = block(lambda: budget.region(3))
    r1 = next(g1)
    g2 = block(lambda: budget.limit(5))
    next(g2)
    g3 = block(lambda: budget.region(2))
    r3 = next(g3)
    # Nested on one thread: the inner region adds its extra tokens only.
    assert (r1.width, r3.width) == (3, 2)
    assert in_use_is(3 + 1)
    assert gomp_count() == 2
    g1.close()  # the outermost block ends first
    assert in_use_is(1 + 1)  # r3's extra token and the thread's own
    assert gomp_count() == 2  # the innermost block's width is still in force
    assert blas_counts() == {2}  # process-wide: the smallest width in flight (2 < 5)
    g3.close()
    assert gomp_count() == 5 and blas_counts() == {5}  # the limit alone now
    assert in_use_is(0)
    g2.close()
    assert native_counts() == before
    assert budget._budget.depth() == 0


def test_coroutines_exiting_out_of_order():
    settle(budget)
    before = native_counts()
    seen = {}

    async def work(name, n, go_in, go_out):
        await go_in.wait()
        with budget.region(n) as r:
            seen[name] = r.width
            await go_out.wait()
            seen[name + " at exit"] = gomp_count()

    async def main():
        a_in, a_out, b_in, b_out = (asyncio.Event() for _ in range(4))
        tasks = [
            asyncio.create_task(work("a", 4, a_in, a_out)),
            asyncio.create_task(work("b", 3, b_in, b_out)),
        ]
        a_in.set()
        await asyncio.sleep(0.01)
        b_in.set()
        await asyncio.sleep(0.01)
        assert in_use_is(4 + 2)
        a_out.set()  # a (entered first) exits first
        await asyncio.sleep(0.01)
        assert in_use_is(3)
        b_out.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert seen["a"] == 4 and seen["b"] == 3
    assert seen["a at exit"] == 3  # b's width was in force on the loop's thread
    assert native_counts() == before
    assert in_use_is(0)


def test_exit_on_another_thread_is_a_clear_error():
    r = budget.region(2)
    r.__enter__()
    errors = []

    def other():
        try:
            r.__exit__(None, None, None)
        except RuntimeError as e:
            errors.append(str(e))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and "must be exited on the thread that entered it" in errors[0]
    assert in_use_is(2)  # still open, on this thread
    r.__exit__(None, None, None)
    assert in_use_is(0)
    with pytest.raises(RuntimeError, match="without being entered"):
        r.__exit__(None, None, None)


def test_a_region_dropped_without_exit_is_closed():
    before = native_counts()
    r = budget.region()
    r.__enter__()
    assert in_use_is(TOTAL)
    del r
    assert in_use_is(0)
    assert native_counts() == before
    assert budget._budget.depth() == 0


def test_threadpool_limits_caps_regions_through_the_controller():
    settle(budget)
    with threadpoolctl.threadpool_limits(2):
        assert budget.stats()["cap"] == 2
        (entry,) = [l for l in threadpoolctl.threadpool_info() if l["user_api"] == "budget"]
        assert entry["num_threads"] == 2
        with budget.region() as r:
            assert (r.width, r.requested) == (2, 2)
    assert budget.stats()["cap"] is None
    # Each region below asks for the whole budget.
    settle(budget)
    with threadpoolctl.threadpool_limits(1, user_api="blas"):  # not budget's user_api
        with budget.region() as r:
            assert r.width == TOTAL
    settle(budget)
    with threadpoolctl.threadpool_limits(3, user_api="budget"):
        with budget.region() as r:
            assert r.width == 3
    settle(budget)
    with budget.region() as r:
        assert r.width == TOTAL


def test_kmeans_calling_threadpoolctl_beside_regions():
    # scikit-learn's KMeans sets BLAS to 1 through threadpoolctl itself; budget regions
    # on other threads set their own widths meanwhile. Both must compute right, and
    # every count must be back at the end.
    settle(budget)
    before = native_counts()
    X, _ = sklearn.datasets.make_blobs(n_samples=600, centers=4, random_state=0)
    ref = sklearn.cluster.KMeans(n_clusters=4, n_init=2, random_state=0).fit(X)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((96, 96))
    want = a @ a.T
    stop = threading.Event()
    failures, rounds = [], [0]

    def regions():
        while not stop.is_set():
            with budget.region(3):
                if not np.allclose(a @ a.T, want):
                    failures.append("matmul")
            rounds[0] += 1

    threads = [threading.Thread(target=regions) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            km = sklearn.cluster.KMeans(n_clusters=4, n_init=2, random_state=0).fit(X)
            if not (np.array_equal(km.labels_, ref.labels_) and np.isclose(km.inertia_, ref.inertia_)):
                failures.append("kmeans")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures
    assert rounds[0] > 0
    settle(budget)
    after = native_counts()
    # Per-thread counts (libgomp) are restored exactly, and every token is back.
    assert {p: n for p, n in after.items() if "gomp" in p} == {p: n for p, n in before.items() if "gomp" in p}
    # OpenBLAS's count is one number for the process, saved and restored by both
    # threadpoolctl (without budget's lock) and budget: when their blocks interleave,
    # the last restore may put back a value the other had set. Reported, not asserted;
    # budget-native would need to route threadpoolctl's set calls through its lock
    # and in-flight protocol to make it exact. Put back for the tests that follow.
    changed = {p: (before[p], n) for p, n in after.items() if "openblas" in p and n != before[p]}
    if changed:
        print(f"[kmeans] OpenBLAS counts left changed (before, after): {changed}")
        threadpoolctl.threadpool_limits({p: b for p, (b, _) in changed.items()})
    assert native_counts() == before


def test_bad_counts_raise_value_errors_naming_the_argument():
    import pytest

    import budget

    for bad in (0, -1, True, False):
        with pytest.raises(ValueError, match="budget.region: max_threads must be a whole number"):
            budget.region(bad)
        with pytest.raises(ValueError, match="budget.limit: n must be a whole number"):
            budget.limit(bad)
    with pytest.raises(TypeError, match="max_threads"):
        budget.region(2.5)
    # As threadpoolctl's threadpool_limits(None): a block that changes nothing.
    with budget.limit(None) as lim:
        assert lim.width is None
    # repr reads as Python.
    assert repr(budget.region(2)) == "<budget.region max_threads=2 (not entered)>"
    assert repr(budget.region()) == "<budget.region max_threads=None (not entered)>"
    assert repr(budget.limit(3)) == "<budget.limit n=3 (closed)>"


def test_a_free_threaded_interpreter_gets_a_clear_import_error():
    # No free-threaded CPython on this machine (3.13t/3.14t need a download that this
    # workplace cannot make): the build flag such an interpreter reports is simulated.
    from conftest import run_python

    out = run_python(
        """
        import sysconfig
        real = sysconfig.get_config_var
        sysconfig.get_config_var = lambda name: 1 if name == "Py_GIL_DISABLED" else real(name)
        try:
            import budget
        except ImportError as e:
            print("ImportError:", e)
        """
    )
    assert out.returncode == 0, out.stderr
    assert "does not support free-threaded CPython" in out.stdout, out.stdout

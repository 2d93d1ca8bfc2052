"""The node budget from Python: loky workers and multiprocessing workers that import
budget share one budget of tokens with the process that made it (budget.share_node,
BUDGET_NODE)."""

from conftest import run_python

NODE = """
import multiprocessing as mp
import os, time
import joblib
import budget

def probe():
    import budget
    with budget.region() as r:
        width = r.width
    j = budget.joined()
    return j["kind"], j.get("path"), j.get("tokens"), width

if __name__ == "__main__":
    path = budget.share_node(4)  # before this process's first region: it joins too
    try:
        j = budget.joined()
        assert (j["kind"], j["path"], j["tokens"]) == ("node", path, 4), j
        for _ in range(20):  # the supplier thread starts with the budget: retry a little
            with budget.region() as r:
                alone = r.width
            if alone == 4:
                break
            time.sleep(0.25)
        print("alone", alone, flush=True)
        with joblib.Parallel(n_jobs=1, backend="loky") as par:
            par([joblib.delayed(probe)()])  # the worker starts (and joins) now
            with budget.region(3) as r:
                assert r.width == 3, r.width
                kind, wpath, tokens, busy = par([joblib.delayed(probe)()])[0]
            print("loky worker", kind, wpath == path, tokens, "width while 3 held:", busy, flush=True)
            # Once this process's region ended its tokens go back to the node within a
            # few ms (one own token lingers): the worker's regions widen.
            freed = []
            for _ in range(50):
                freed.append(par([joblib.delayed(probe)()])[0][3])
                if freed[-1] >= 2:
                    break
                time.sleep(0.02)
            print("loky worker width once freed:", freed[-1], flush=True)
        with mp.get_context("fork").Pool(1) as pool:
            kind, fpath, _, _ = pool.apply(probe)
        print("fork worker", kind, fpath == path, flush=True)
    finally:
        os.remove(path)
"""


def test_loky_and_fork_workers_share_the_node_budget():
    r = run_python(NODE, env={"BUDGET_NUM_THREADS": "4"}, timeout=240)
    assert r.returncode == 0, (r.stdout, r.stderr[-3000:])
    out = r.stdout
    # Alone, a region asks the node for the tokens it lacks and gets them all.
    assert "alone 4" in out, out
    # The worker joined the same node budget, and while this process held 3 of its 4
    # tokens the worker's region was narrowed. (The node's rule would give it 1, its
    # own thread; 2 is seen at times: reported to the node budget's authors, see
    # crates/budget-py/README.md.)
    assert "loky worker node True 4 width while 3 held:" in out, out
    busy = int(out.split("width while 3 held:")[1].split()[0])
    assert 1 <= busy < 4, out
    freed = int(out.split("loky worker width once freed:")[1].split()[0])
    assert freed >= 2, out
    assert "fork worker node True" in out, out

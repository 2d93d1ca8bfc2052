"""The talk's cases from Python: nested parallelism with NumPy and scikit-learn, timed
three ways: every layer at its default (all cores), the best static setting (several
measured, the fastest kept), and budget regions, against the ideal serial / cores.

    scripts/setup-python.sh                      # .venv with the wheels and budget
    .venv/bin/python examples/python/demo.py     # --quick, --reps N, --json PATH, --svg PATH

Scenarios:
  threads x BLAS      ThreadPoolExecutor(4) x 64 np.linalg.svd of 256x256
  lone big matmul     one 2048x2048 matmul (full width is right when alone)
  processes x BLAS    joblib Parallel(n_jobs=2, loky) x 8 tasks of 8 SVDs 256x256
  sklearn OpenMP x 2  two threads each fitting a HistGradientBoostingClassifier
  sklearn x 2, 4 fits each  the same, four fits one after another on each thread
                      (as a cross-validation loop on two threads)
  GridSearchCV joblib GridSearchCV(HistGradientBoostingClassifier, 6 params x 3 folds,
                      n_jobs=2): joblib's loky (default) and threading backends, and
                      joblib.parallel_config(backend="budget") with no other change;
                      each run is a process of its own (examples/python/joblib_bench.py)

Strategies are interleaved (one run of each in turn, repeated), and each time is the
median of the repetitions, with the spread (min-max) beside it. "budget" is the same
code with `with budget.region():` around each task, and no per-scenario setting.
libgomp's idle threads busy-wait (~300k spins at every barrier) unless
OMP_WAIT_POLICY=passive is set before it loads; spinning threads hold cores the budget
has handed to others (and any other load on the machine makes a spinning team crawl),
so this script sets OMP_WAIT_POLICY=passive for every strategy unless it is set
already (--active-wait leaves it unset). budget documents the same setting for users.
The processes row makes a node budget (budget.share_node) that the loky workers
share; a build without it says so in the row. Its workers start once with OpenBLAS
free to use every core, and each strategy sets its width inside the task
(threadpoolctl limits, or a budget region): loky restarts its workers whenever
inner_max_num_threads changes, which would charge a restart to whichever strategies
differ from their predecessor.
The sklearn rows: in the single-fit row the first region to open takes every free
core and scikit-learn fixes a fit's OpenMP team at its start, so the second thread
runs beside it overcommitted (3 threads on 2 cores) for the whole fit; no library can
tell at the first entry that a second fit is about to start. With several fits per
thread (a cross-validation loop) the overcommitted thread's owed token is paid first
when a fit ends, and the fits settle at one core each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

if "--active-wait" not in sys.argv:
    # Before NumPy / scikit-learn load their OpenMP runtime (it reads this once).
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np
import threadpoolctl

import budget


def svd_tasks(count, n=256, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, n)) for _ in range(count)]


# ---- scenario 1: Python threads x BLAS ------------------------------------------------

SVD_INPUTS = None


def svd(a):
    return np.linalg.svd(a, compute_uv=True)[1][0]


def svd_in_region(a):
    with budget.region():
        return svd(a)


def threads_x_blas(scale):
    global SVD_INPUTS
    SVD_INPUTS = svd_tasks(max(4, int(64 * scale)))

    def serial():
        with threadpoolctl.threadpool_limits(1):
            [svd(a) for a in SVD_INPUTS]

    def pool(f):
        with ThreadPoolExecutor(4) as ex:
            list(ex.map(f, SVD_INPUTS))

    def blas1_pool():
        with threadpoolctl.threadpool_limits(1):
            pool(svd)

    return {
        "serial": serial,
        "default": lambda: pool(svd),
        "static": {
            "threadpool_limits(1) + 4 threads": blas1_pool,
            "1 thread + BLAS default": lambda: [svd(a) for a in SVD_INPUTS],
        },
        "budget": lambda: pool(svd_in_region),
    }


# ---- scenario 2: one large matmul, alone ------------------------------------------------


def lone_matmul(scale):
    n = max(256, int(2048 * scale**0.5))
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))

    def serial():
        with threadpoolctl.threadpool_limits(1):
            a @ b

    def in_region():
        with budget.region():
            a @ b

    def blas1():
        with threadpoolctl.threadpool_limits(1):
            a @ b

    return {
        "serial": serial,
        "default": lambda: a @ b,
        "static": {"BLAS default": lambda: a @ b, "threadpool_limits(1)": blas1},
        "budget": in_region,
    }


# ---- scenario 3: processes x BLAS ---------------------------------------------------------


def worker_svds(count, seed, mode):
    """One task in a worker: `count` SVDs, at the BLAS default (mode None), under
    threadpool_limits(mode) (an int), or in a budget region (mode "region")."""
    inputs = svd_tasks(count, seed=seed)
    if mode == "region":
        with budget.region():
            return [svd(a) for a in inputs]
    if mode is not None:
        with threadpoolctl.threadpool_limits(mode):
            return [svd(a) for a in inputs]
    return [svd(a) for a in inputs]


def processes_x_blas(scale):
    import joblib

    tasks = max(2, int(8 * scale))
    per_task = 8
    cores = budget.stats()["total"]

    def run(mode):
        # One worker environment for every strategy (OpenBLAS may use all cores): loky
        # restarts its workers whenever inner_max_num_threads changes, so setting the
        # static widths through it would make those strategies pay a worker restart
        # each round. The static widths are set in the task instead, as a user would.
        with joblib.parallel_config(backend="loky", inner_max_num_threads=cores):
            joblib.Parallel(n_jobs=2)(
                joblib.delayed(worker_svds)(per_task, i, mode) for i in range(tasks)
            )

    def serial():
        with threadpoolctl.threadpool_limits(1):
            worker_svds(per_task * tasks, 0, None)

    note = None
    if hasattr(budget, "share_node"):
        # The workers (started from now on) share one node budget of `cores` tokens;
        # this process's own budget has started already and stays its own.
        import atexit

        node = budget.share_node(cores, children_only=True)
        atexit.register(lambda: os.path.exists(node) and os.remove(node))
    else:
        note = "process budgets only (no node budget in this build)"
    # Start the workers once, so that no strategy pays for it.
    run(None)
    return {
        "serial": serial,
        "default": lambda: run(None),
        "static": {
            "workers BLAS=1": lambda: run(1),
            f"workers BLAS={cores}": lambda: run(cores),
        },
        "budget": lambda: run("region"),
        "note": note,
    }


# ---- scenario 4: scikit-learn's OpenMP estimators on two threads -------------------------


def sklearn_openmp(scale, fits=1):
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, y = make_classification(n_samples=max(2000, int(20000 * scale)), n_features=20, random_state=0)

    def fit():
        HistGradientBoostingClassifier(max_iter=20, early_stopping=False, random_state=0).fit(X, y)

    def fit_omp1():
        with threadpoolctl.threadpool_limits(1, user_api="openmp"):  # this thread only
            fit()

    def fit_in_region():
        with budget.region():
            fit()

    def two(f):
        # Each of two threads fits `fits` models one after another, as a
        # cross-validation loop on a thread pool does.
        with ThreadPoolExecutor(2) as ex:
            list(ex.map(lambda _: [f() for _ in range(fits)], range(2)))

    def serial():
        for _ in range(2 * fits):
            fit_omp1()

    return {
        "serial": serial,
        "default": lambda: two(fit),
        "static": {"OMP=1 per thread": lambda: two(fit_omp1), "OpenMP default": lambda: two(fit)},
        "budget": lambda: two(fit_in_region),
    }


def grid_search(scale):
    # Each run in a process of its own: loky's workers are started once per process,
    # and switching backends in one process would restart them for every strategy.
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("joblib_bench", os.path.join(here, "joblib_bench.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def run(strategy):
        return lambda: bench.measure("grid", strategy)

    return {
        "serial": run("serial"),
        "default": run("loky"),
        "static": {"threading backend": run("threading"), "threading, OMP=1": run("threading, 1 thread each")},
        "budget": run("budget"),
        "note": "default = loky",
    }


SCENARIOS = [
    ("threads x BLAS", threads_x_blas),
    ("lone big matmul", lone_matmul),
    ("processes x BLAS", processes_x_blas),
    ("sklearn OpenMP x 2", sklearn_openmp),
    ("sklearn x 2, 4 fits each", lambda scale: sklearn_openmp(scale, fits=4)),
    ("GridSearchCV joblib", grid_search),
]


def measure(strategies, reps):
    """Interleaved: each repetition runs every strategy once, in turn."""
    runs = {"serial": strategies["serial"], "default": strategies["default"], "budget": strategies["budget"]}
    for name, f in strategies["static"].items():
        runs["static: " + name] = f
    times = {k: [] for k in runs}
    for f in runs.values():  # warm-up: libraries loaded, pools started
        f()
    for _ in range(reps):
        for k, f in runs.items():
            t = time.perf_counter()
            seconds = f()  # a run in a process of its own reports its own time
            times[k].append(seconds if isinstance(seconds, float) else time.perf_counter() - t)
    return times


def summarise(name, times, cores, note=None):
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: (min(v), max(v)) for k, v in times.items()}
    statics = {k: v for k, v in med.items() if k.startswith("static: ")}
    best_static = min(statics, key=statics.get)
    ideal = med["serial"] / cores
    row = {"scenario": name, "cores": cores, "ideal_s": ideal, "note": note}
    for strategy, key in (("serial", "serial"), ("all_cores", "default"), ("best_static", best_static), ("budget", "budget")):
        row[strategy] = {
            "seconds": med[key],
            "min_s": spread[key][0],
            "max_s": spread[key][1],
            "ratio_to_ideal": med[key] / ideal,
            "ratio_to_best_static": med[key] / med[best_static],
        }
    row["best_static"]["setting"] = best_static[len("static: "):]
    return row


def fmt(cell):
    return f"{cell['seconds'] * 1e3:8.1f} ms {cell['ratio_to_ideal']:5.2f}x"


def write_svg(path, rows, cores, quick=False):
    """One group of bars per scenario: each strategy's median, as a ratio to the ideal
    serial / cores (1.0 is the ideal; lower is not possible, higher is slower)."""
    strategies = [("all_cores", "all cores", "#d62728"), ("best_static", "best static", "#7f7f7f"), ("budget", "budget", "#2ca02c")]
    bar, gap, left, top, height = 18, 26, 210, 40, 260
    width = left + len(rows) * (len(strategies) * bar + gap) + 20
    top_ratio = max([1.0] + [min(r[k]["ratio_to_ideal"], 6.0) for r in rows for k, _, _ in strategies])
    y = lambda ratio: top + height - height * min(ratio, 6.0) / top_ratio
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + height + 120}" font-family="sans-serif" font-size="11">',
        f'<text x="10" y="20" font-size="13">budget, Python: time / ideal (serial / {cores} cores), median'
        + (" (--quick: not a verdict)" if quick else "") + "</text>",
        f'<line x1="{left - 5}" x2="{width - 10}" y1="{y(1.0):.1f}" y2="{y(1.0):.1f}" stroke="#000" stroke-dasharray="4 3"/>',
        f'<text x="{left - 10}" y="{y(1.0) + 4:.1f}" text-anchor="end">ideal 1.0</text>',
    ]
    for i, (_, label, colour) in enumerate(strategies):
        out.append(f'<rect x="10" y="{top + 20 * i}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="28" y="{top + 20 * i + 10}">{label}</text>')
    for j, r in enumerate(rows):
        x0 = left + j * (len(strategies) * bar + gap)
        for i, (key, _, colour) in enumerate(strategies):
            ratio = r[key]["ratio_to_ideal"]
            out.append(
                f'<rect x="{x0 + i * bar}" y="{y(ratio):.1f}" width="{bar - 2}" height="{top + height - y(ratio):.1f}" fill="{colour}">'
                f"<title>{r['scenario']}: {key} {r[key]['seconds'] * 1e3:.1f} ms, {ratio:.2f}x ideal</title></rect>"
            )
            out.append(f'<text x="{x0 + i * bar + bar / 2 - 1}" y="{y(ratio) - 3:.1f}" text-anchor="middle" font-size="9">{ratio:.1f}</text>')
        out.append(
            f'<text transform="translate({x0 + bar},{top + height + 12}) rotate(30)" font-size="10">{r["scenario"]}</text>'
        )
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="scale 0.25, 3 repetitions")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 5)")
    p.add_argument("--scale", type=float, default=None, help="workload size (default 1)")
    p.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    p.add_argument("--svg", metavar="PATH", help="draw the rows as a bar chart (SVG)")
    p.add_argument("--only", metavar="NAME", help="run the scenarios whose name contains NAME")
    p.add_argument("--active-wait", action="store_true", help="leave OMP_WAIT_POLICY unset")
    args = p.parse_args()
    scale = args.scale or (0.25 if args.quick else 1.0)
    reps = args.reps or (3 if args.quick else 5)
    cores = budget.stats()["total"]

    print(
        f"budget {budget.__version__}: {cores} cores; numpy {np.__version__}; load {os.getloadavg()[0]:.2f}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}"
    )
    for lib in budget.threadpool_info():
        print(f"  {lib['internal_api']:<9} {lib.get('version') or '-':<14} {lib['num_threads']:>3} threads  {os.path.basename(lib['filepath'])}")
    print(f"\nmedian of {reps} (interleaved), ratio to the ideal serial / {cores}:\n")
    head = f"{'scenario':<20} {'all cores':>20} {'best static':>20} {'budget':>20}  budget/best  best static setting"
    print(head)
    print("-" * len(head))
    rows = []
    for name, make in SCENARIOS:
        if args.only and args.only not in name:
            continue
        strategies = make(scale)
        times = measure(strategies, reps)
        row = summarise(name, times, cores, strategies.get("note"))
        rows.append(row)
        b = row["budget"]
        print(
            f"{name:<20} {fmt(row['all_cores']):>20} {fmt(row['best_static']):>20} {fmt(b):>20}  "
            f"{b['ratio_to_best_static']:10.2f}x  {row['best_static']['setting']}"
            + (f"  [{row['note']}]" if row["note"] else "")
        )
        sys.stdout.flush()
    print(f"\nspread (min-max ms): " + "; ".join(
        f"{r['scenario']}: budget {r['budget']['min_s']*1e3:.0f}-{r['budget']['max_s']*1e3:.0f}, "
        f"best static {r['best_static']['min_s']*1e3:.0f}-{r['best_static']['max_s']*1e3:.0f}" for r in rows))
    print(f"load after: {os.getloadavg()[0]:.2f}; {budget.stats()}")
    if args.quick:
        print(
            "--quick: a quarter of the work, 3 repetitions: this checks that every scenario "
            "runs; its ratios are not a verdict (run without --quick for figures)"
        )
    if args.svg:
        write_svg(args.svg, rows, cores, quick=args.quick)
        print(f"chart written to {args.svg}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"schema": "budget-python-demo/1", "rows": rows}, f, indent=1)
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()

"""joblib's backends against budget's, interleaved round by round in one run.

    .venv/bin/python examples/python/joblib_bench.py             # 5 rounds
    .venv/bin/python examples/python/joblib_bench.py --rounds 9

Cases (n_jobs=2 everywhere; no thread variable is set by this script):
- ``grid``: ``GridSearchCV(HistGradientBoostingClassifier, 6 params x 3 folds)``, the
  OpenMP estimator scikit-learn users run through joblib;
- ``svd``: 48 SVDs of 256x256 through ``Parallel(delayed(np.linalg.svd))``;
- ``tail``: 3 HistGradientBoosting fits on 2 workers, the third of them alone at the
  end: its time against loky with ``inner_max_num_threads=1`` (loky's default) and
  with ``inner_max_num_threads=2`` (the static settings a user can pick).

Strategies: ``loky`` (joblib's default), ``threading`` (joblib's thread backend),
``threading, 1 thread each`` (the same with ``OMP/OPENBLAS/MKL_NUM_THREADS=1`` set
for the process, the best static setting for threads), ``budget`` (the budget
backend: loky workers that share a node budget), ``budget threads``
(``prefer="threads"``) and, for the tail, ``loky inner=2``. Each measurement is a
process of its own (one warm-up run, then the timed one: loky's workers are started
once per process, as a user's program starts them), and the strategies alternate
round by round. Each figure is the median [min-max] over the rounds, and the ratio of
medians against the best other strategy of the same case.
"""

import argparse
import os
import statistics
import time

import budget  # registers the backend
import joblib
import numpy as np
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import GridSearchCV


def grid(config):
    X, y = make_classification(n_samples=4000, n_features=20, random_state=0)
    params = {"max_leaf_nodes": [15, 31, 63], "learning_rate": [0.1, 0.2]}

    def run():
        with joblib.parallel_config(**config):
            GridSearchCV(
                HistGradientBoostingClassifier(max_iter=40, random_state=0),
                params,
                cv=3,
                n_jobs=2,
            ).fit(X, y)

    return run


def first_singular(a):
    return np.linalg.svd(a)[1][0]


def svd(config):
    mats = [np.random.default_rng(i).standard_normal((256, 256)) for i in range(48)]
    f = first_singular

    def run():
        with joblib.parallel_config(**config):
            joblib.Parallel(n_jobs=2)(joblib.delayed(f)(a) for a in mats)

    return run


def fit(X, y, iters):
    HistGradientBoostingClassifier(max_iter=iters, random_state=0).fit(X, y)
    return iters


def tail(config):
    X, y = make_classification(n_samples=20000, n_features=30, random_state=0)

    def run():
        with joblib.parallel_config(**config):
            # Two short fits, then a long one that starts as soon as a worker is free:
            # for most of its time it runs alone.
            joblib.Parallel(n_jobs=2, batch_size=1)(
                joblib.delayed(fit)(X, y, i) for i in (5, 5, 60)
            )

    return run


# name -> (joblib config, extra environment of the process)
STATIC1 = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
STRATEGIES = {
    "loky": ({"backend": "loky"}, {}),
    "threading": ({"backend": "threading"}, {}),
    "threading, 1 thread each": ({"backend": "threading"}, STATIC1),
    "budget": ({"backend": "budget"}, {}),
    "budget threads": ({"backend": "budget", "prefer": "threads"}, {}),
    "loky inner=2": ({"backend": "loky", "inner_max_num_threads": 2}, {}),
    "serial": ({"backend": "sequential"}, STATIC1),
}
CASES = {
    "grid": (grid, ["loky", "threading", "threading, 1 thread each", "budget", "budget threads"]),
    "svd": (svd, ["loky", "threading", "threading, 1 thread each", "budget", "budget threads"]),
    "tail": (tail, ["loky", "loky inner=2", "budget"]),
}


def one(case, strategy):
    """In a process of its own: one warm-up run (workers, imports), then one timed."""
    run = CASES[case][0](STRATEGIES[strategy][0])
    run()
    t = time.perf_counter()
    run()
    print(f"SECONDS {time.perf_counter() - t:.6f}")


def measure(case, strategy):
    import subprocess
    import sys

    env = dict(os.environ)
    env.update(STRATEGIES[strategy][1])
    r = subprocess.run(
        [sys.executable, __file__, "--one", case, strategy],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        raise SystemExit(f"{case} / {strategy} failed:\n{r.stderr[-2000:]}")
    return float(r.stdout.split("SECONDS")[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "STRATEGY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(*args.one)
        return
    load = os.getloadavg()[0]
    print(f"joblib_bench: {budget.stats()['total']} cores, {args.rounds} rounds, load {load:.2f}")
    for case, (_, names) in CASES.items():
        if args.case and case not in args.case:
            continue
        times = {name: [] for name in names}
        for r in range(args.rounds):
            # Rotate the order each round: what one leaves behind falls on each other.
            for k in range(len(names)):
                name = names[(k + r) % len(names)]
                times[name].append(measure(case, name))
        medians = {n: statistics.median(v) for n, v in times.items()}
        print(f"\n{case} (s: median [min-max]; ratio of medians to the best other)", flush=True)
        for name, v in times.items():
            best_other = min(m for n, m in medians.items() if n != name)
            print(
                f"  {name:<26} {medians[name]:6.3f} [{min(v):.3f}-{max(v):.3f}]"
                f"   {medians[name] / best_other:.2f}x"
                f"   slowest {max(v) / best_other:.2f}x",
                flush=True,
            )
    print(f"\nload at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

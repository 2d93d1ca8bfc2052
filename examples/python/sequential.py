"""A lone script's sequential matmuls, with and without budget: is budget ever slower
than doing nothing?

Seven ``a @ a`` on 2000² doubles, 50 ms apart, in a fresh interpreter per run, four
ways, interleaved round by round (the order rotates):

- ``none``: NumPy alone (budget not imported);
- ``region``: each call in ``with budget.region():``;
- ``budget run``: the same script under ``budget run -j <cores>``;
- ``BUDGET_NODE=1``: the same script joining the node budget of its CPU set (in a
  private runtime directory, so no other process shares it);
- ``make + recipe``: the same script as a ``+`` recipe of ``make -j<cores>`` (make's
  jobserver).

No OPENBLAS_/OMP_ variable is set (they are the user's). Each call's time is compared
with the same call (same index) of ``none``: the median over rounds and the slowest
round. Goal (the never-slower issue): every call within 1.15x.

    .venv/bin/python examples/python/sequential.py            # 5 rounds
    .venv/bin/python examples/python/sequential.py --rounds 9
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

SCRIPT = r"""
import json, sys, time
import numpy as np
use = sys.argv[1] == "1"
if use:
    import budget
a = np.random.default_rng(0).standard_normal((2000, 2000))
times, widths = [], []
for _ in range(7):
    t = time.perf_counter()
    if use:
        with budget.region() as r:
            a @ a
        widths.append(r.width)
    else:
        a @ a
    times.append(time.perf_counter() - t)
    time.sleep(0.05)
print(json.dumps({"times": times, "widths": widths}))
"""


def user_env(**extra):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENBLAS_", "GOTO_", "OMP_", "GOMP_", "KMP_", "BUDGET_"))
        and k not in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS")
    }
    env.update(extra)
    return env


def budget_cli():
    path = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "budget")
    if not os.path.exists(path):
        subprocess.run(["cargo", "build", "-q", "--release", "-p", "budget-cli", "--bin", "budget"], cwd=ROOT, check=True)
    return path


def make_command(dir, cmd, cores):
    """`make -j<cores>` running `cmd` as a `+` recipe (it gets make's jobserver); the
    recipe's output is make's."""
    script = os.path.join(dir, "seq.py")
    with open(script, "w") as f:
        f.write(SCRIPT)
    with open(os.path.join(dir, "Makefile"), "w") as f:
        f.write(f"all:\n\t+{cmd[0]} {script} {cmd[-1]}\n")
    return ["make", "-s", f"-j{cores}", "-C", dir]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    runtime = tempfile.mkdtemp(prefix="budget-seq-")
    os.chmod(runtime, 0o700)
    py = [sys.executable, "-c", SCRIPT]
    modes = {
        "none": (py + ["0"], user_env()),
        "region": (py + ["1"], user_env()),
        "budget run": ([budget_cli(), "run", "-j", str(cores), "--"] + py + ["1"], user_env()),
        "BUDGET_NODE=1": (py + ["1"], user_env(BUDGET_NODE="1", XDG_RUNTIME_DIR=runtime)),
        "make + recipe": (make_command(runtime, py + ["1"], cores), user_env()),
    }
    names = list(modes)
    results = {m: [] for m in names}
    widths = {m: set() for m in names}
    with open("/proc/loadavg") as f:
        print(f"{cores} cores, load {f.read().split()[0]}; {args.rounds} rounds", flush=True)
    for r in range(args.rounds):
        for k in range(len(names)):
            m = names[(k + r) % len(names)]
            cmd, env = modes[m]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[m].append(res["times"])
            widths[m].update(res["widths"])
    base = [statistics.median(run[i] for run in results["none"]) for i in range(7)]
    print("\nper call: time / the same call of `none` (median over rounds, [slowest round])")
    print(f"  {'call':<14}" + "".join(f"{i + 1:>13}" for i in range(7)))
    print(f"  {'none (ms)':<14}" + "".join(f"{b * 1e3:>13.1f}" for b in base))
    # The noise floor: `none` against its own median.
    floor = max(max(run[i] for run in results["none"]) / base[i] for i in range(7))
    print(f"  {'none':<14}" + "".join(
        f"{'1.00 [' + format(max(run[i] for run in results['none']) / base[i], '.2f') + ']':>13}"
        for i in range(7)) + f"   (noise floor: slowest {floor:.2f}x)")
    for m in names[1:]:
        cells = []
        worst = 0.0
        for i in range(7):
            med = statistics.median(run[i] for run in results[m]) / base[i]
            slow = max(run[i] for run in results[m]) / base[i]
            worst = max(worst, slow)
            cells.append(f"{med:.2f} [{slow:.2f}]")
        print(f"  {m:<14}" + "".join(f"{c:>13}" for c in cells) + f"   widths {sorted(widths[m])}, slowest {worst:.2f}x")
    with open("/proc/loadavg") as f:
        print(f"load at the end {f.read().split()[0]}")


if __name__ == "__main__":
    main()

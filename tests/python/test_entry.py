"""A region's width at entry is what is really free for it, for blocks whose width
is fixed at entry (`with budget.region()` around a BLAS call): a lone script's
sequential matmuls each get the whole budget, OpenBLAS's spinning workers from the
previous call narrow nothing, and a lone process that shares an outside budget
(`budget run`, `BUDGET_NODE=1`, a jobserver with free tokens) takes the free tokens at
each region's entry without waiting. Each runs in a fresh interpreter with the
environment a user has: no OPENBLAS_/OMP_ variables, the machine's own total."""

import os
import subprocess
import sys
import textwrap

from conftest import budget_cli, run_python, user_env

SEQUENTIAL = """
import sys, time
import numpy as np
import threadpoolctl
import budget

def openblas_threads():
    return [l["num_threads"] for l in threadpoolctl.threadpool_info()
            if l["internal_api"] == "openblas"][0]

a = np.random.default_rng(0).standard_normal((700, 700))
total = budget.stats()["total"]
seen = {}
for gap in [float(g) for g in sys.argv[1].split(",")]:
    rows = []
    for _ in range(int(sys.argv[2])):
        with budget.region() as r:
            a @ a
            rows.append((r.width, openblas_threads()))
        time.sleep(gap)
    seen[gap] = rows
print("TOTAL", total)
print("SEEN", seen)
s = budget.stats()
print("STATS", s)
"""


def run_sequential(gaps, count, cmd_prefix=(), env=None):
    proc = subprocess.run(
        [*cmd_prefix, sys.executable, "-c", textwrap.dedent(SEQUENTIAL), gaps, str(count)],
        env=env or user_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    total = int(out["TOTAL"])
    seen = eval(out["SEEN"])  # noqa: S307 - our own repr of tuples and floats
    stats = eval(out["STATS"])  # noqa: S307
    print(proc.stdout)
    return total, seen, stats


def test_a_lone_scripts_sequential_matmuls_each_get_the_whole_budget():
    total, seen, stats = run_sequential("0,0.01,0.05", 7)
    for gap, rows in seen.items():
        assert rows == [(total, total)] * len(rows), f"{gap} s apart: {rows}"
    assert stats["grants_below_request"] == 0, stats


def test_under_budget_run_each_region_gets_the_whole_node():
    total, seen, stats = run_sequential("0.2", 3, cmd_prefix=(budget_cli(), "run", "-j", "2", "--"))
    assert seen[0.2] == [(2, 2)] * 3, (total, seen)
    assert stats["narrowed_by_processes"] == 0, stats


def test_with_budget_node_1_each_region_gets_the_whole_node(tmp_path):
    # A private runtime directory: the node file of this CPU set is this test's alone.
    env = user_env(BUDGET_NODE="1", XDG_RUNTIME_DIR=str(tmp_path))
    os.chmod(tmp_path, 0o700)
    total, seen, _ = run_sequential("0.2", 3, env=env)
    assert seen[0.2] == [(total, total)] * 3, (total, seen)


def test_under_a_fifo_jobserver_each_region_takes_the_free_token(tmp_path):
    fifo = tmp_path / "jobserver.fifo"
    os.mkfifo(fifo, 0o600)
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # keeps the fifo open, holds its bytes
    try:
        os.write(fd, b"+")  # make -j2: one byte, and the process's implicit token
        env = user_env(MAKEFLAGS=f"-j2 --jobserver-auth=fifo:{fifo}", BUDGET_NUM_THREADS="2")
        _, seen, _ = run_sequential("0.2", 3, env=env)
        assert seen[0.2] == [(2, 2)] * 3, seen
        assert os.read(fd, 8) == b"+", "the byte is back in the fifo"
    finally:
        os.close(fd)


def test_narrowed_by_other_processes_is_counted(tmp_path):
    # A holder keeps both node tokens in a region; a region of another process then
    # gets width 1, counted as narrowed by other processes.
    node = str(tmp_path / "test.node")
    made = run_python(f"import budget; budget.share_node(2, path={node!r})", env=user_env())
    assert made.returncode == 0, made.stderr
    ready = tmp_path / "ready"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time, budget
                with budget.region() as r:
                    open({str(ready)!r}, "w").write(str(r.width))
                    time.sleep(60)
                """
            ),
        ],
        env=user_env(BUDGET_NODE=node),
    )
    try:
        code = f"""
            import time, budget
            while not __import__("os").path.exists({str(ready)!r}):
                time.sleep(0.01)
            with budget.region() as r:
                width = r.width
            s = budget.stats()
            print(width, s["narrowed_by_processes"], s["grants_below_request"])
        """
        proc = run_python(code, env=user_env(BUDGET_NODE=node))
        assert proc.returncode == 0, proc.stderr
        width, by_processes, narrowed = map(int, proc.stdout.split())
        assert (width, by_processes, narrowed) == (1, 1, 1), proc.stdout
    finally:
        holder.kill()
        holder.wait()


def test_under_budget_run_static_env_a_budget_enabled_script_keeps_its_widths():
    # --static-env 1 is for the programs of the tree that are not budget-enabled:
    # NumPy's OpenBLAS in a script that uses budget still runs at each region's width.
    cmd = (budget_cli(), "run", "-j", "2", "--static-env", "1", "--")
    total, seen, _ = run_sequential("0.2", 3, cmd_prefix=cmd)
    assert seen[0.2] == [(2, 2)] * 3, (total, seen)

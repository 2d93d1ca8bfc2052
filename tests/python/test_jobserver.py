"""make's jobserver from Python: `import budget` reads MAKEFLAGS long after the
program may have opened descriptors of its own. Only descriptors provably make's
(inherited across exec, the two ends of one pipe) or a real fifo are used: a
program's own pipe that reuses the numbers make named is never read or written,
and a Python process in a `+` recipe of real make still joins."""

import os
import subprocess
import sys
import textwrap

from conftest import run_python, user_env

OWN_PIPE = """
import os
r, w = os.pipe()
os.environ["MAKEFLAGS"] = f"-j2 --jobserver-auth={r},{w}"
os.write(w, b"0123456789")
import budget
with budget.region() as reg:
    width = reg.width
print("JOINED", budget.joined()["kind"])
print("BYTES", os.read(r, 64).decode())
"""


def run_script(code):
    """Runs `code` as a user's fresh process; returns its `KEY value` lines as a dict
    and its stderr."""
    proc = run_python(code, env=user_env())
    assert proc.returncode == 0, proc.stderr
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines()), proc.stderr


def test_the_programs_own_pipe_is_never_taken_for_make():
    out, stderr = run_script(OWN_PIPE)
    assert out["BYTES"] == "0123456789", out
    assert out["JOINED"] == "local", out
    assert "close-on-exec" in stderr, stderr


CROSSED = """
import os
a_r, a_w = os.pipe()
b_r, b_w = os.pipe()
for fd in (a_r, b_w):
    os.set_inheritable(fd, True)
os.environ["MAKEFLAGS"] = f"-j2 --jobserver-auth={a_r},{b_w}"
os.write(a_w, b"xyz")
import budget
with budget.region():
    pass
print("JOINED", budget.joined()["kind"])
print("BYTES", os.read(a_r, 64).decode())
"""


def test_two_different_pipes_are_not_a_jobserver():
    out, stderr = run_script(CROSSED)
    assert (out["JOINED"], out["BYTES"]) == ("local", "xyz"), out
    assert "not the two ends of one pipe" in stderr, stderr


def run_make(tmp_path, makefile, jobs, timeout=180):
    """Runs real make with `makefile` in `tmp_path` as a user would (budget's total 2);
    returns the completed process."""
    (tmp_path / "Makefile").write_text(makefile)
    return subprocess.run(
        ["make", "-s", f"-j{jobs}", "-C", str(tmp_path)],
        env=user_env(BUDGET_NUM_THREADS="2"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_plus_recipe_of_real_make_joins(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(
        textwrap.dedent(
            """
            import budget
            with budget.region() as r:
                print("JOINED", budget.joined()["kind"], "WIDTH", r.width)
            """
        )
    )
    proc = run_make(tmp_path, f"all:\n\t+{sys.executable} {script} > {tmp_path}/out\n", 2)
    assert proc.returncode == 0, proc.stderr
    out = (tmp_path / "out").read_text()
    assert "JOINED jobserver WIDTH 2" in out, out + proc.stderr


FORK_POOL = """
import multiprocessing as mp
import os, sys, time
import budget

def task(i):
    # A region that waits until it holds 2 tokens (its own and one of make's): the
    # worker ends holding a jobserver byte within the linger.
    with budget.region() as r:
        deadline = time.monotonic() + 10
        while budget.joined()["held"] < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        return budget.joined()["held"]

if __name__ == "__main__":
    how = sys.argv[1]
    assert budget.joined()["kind"] == "jobserver", budget.joined()
    for round in range(3):
        pool = mp.get_context("fork").Pool(2)
        held = pool.map(task, range(4))
        if how == "close":
            pool.close()  # the workers end with os._exit
            pool.join()
        else:
            time.sleep(0.001)  # a worker may still hold its byte
            pool.terminate()  # SIGTERM to every worker
            pool.join()
        print("round", round, "held", max(held), flush=True)
    if how == "exec":
        with budget.region():
            deadline = time.monotonic() + 10
            while budget.joined()["held"] < 2 and time.monotonic() < deadline:
                time.sleep(0.001)
        print("exec holding", budget.joined()["held"], flush=True)
        os.execv("/bin/true", ["true"])
"""


def run_under_make(tmp_path, how):
    script = tmp_path / "pool.py"
    script.write_text(textwrap.dedent(FORK_POOL))
    proc = run_make(tmp_path, f"all:\n\t+{sys.executable} {script} {how} > {tmp_path}/out\n", 3)
    return proc, (tmp_path / "out").read_text()


def test_fork_workers_that_end_with_os_exit_give_makes_tokens_back(tmp_path):
    proc, out = run_under_make(tmp_path, "close")
    assert proc.returncode == 0, proc.stderr
    assert "INTERNAL" not in proc.stderr, proc.stderr
    # Every round's workers still reach 2 tokens: none was lost by the round before.
    assert out.count("held 2") == 3, out


def test_fork_workers_ended_by_sigterm_give_makes_tokens_back(tmp_path):
    proc, out = run_under_make(tmp_path, "terminate")
    assert proc.returncode == 0, proc.stderr
    assert "INTERNAL" not in proc.stderr, proc.stderr
    assert out.count("held 2") == 3, out


def test_exec_after_regions_gives_makes_tokens_back(tmp_path):
    proc, out = run_under_make(tmp_path, "exec")
    assert proc.returncode == 0, proc.stderr
    assert "exec holding 2" in out, out
    assert "INTERNAL" not in proc.stderr, proc.stderr


SIGNALLED = """
import os, signal, sys, time
import budget

with budget.region() as r:
    deadline = time.monotonic() + 10
    while budget.joined()["held"] < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    print("holding", budget.joined()["held"], flush=True)
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    time.sleep(5)
print("not reached")
"""


def test_a_fatal_signal_gives_makes_tokens_back(tmp_path):
    script = tmp_path / "sig.py"
    script.write_text(textwrap.dedent(SIGNALLED))
    # The recipe's process dies of the signal; `-` lets make go on to its end, where
    # it counts its tokens.
    proc = run_make(
        tmp_path,
        "all: a b\n"
        f"a:\n\t-+{sys.executable} {script} SIGTERM > {tmp_path}/a\n"
        f"b:\n\t-+{sys.executable} {script} SIGHUP > {tmp_path}/b\n",
        3,
        timeout=120,
    )
    assert "holding 2" in (tmp_path / "a").read_text() + (tmp_path / "b").read_text()
    assert "not reached" not in (tmp_path / "a").read_text()
    # The process ended by the signal, as it would have without budget...
    assert "Terminated" in proc.stderr or "Error" in proc.stderr, proc.stderr
    # ...and gave its byte back first.
    assert "INTERNAL" not in proc.stderr, proc.stderr

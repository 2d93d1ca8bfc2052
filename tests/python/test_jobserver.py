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
    (tmp_path / "Makefile").write_text(f"all:\n\t+{sys.executable} {script} > {tmp_path}/out\n")
    env = user_env(BUDGET_NUM_THREADS="2")
    proc = subprocess.run(
        ["make", "-s", "-j2", "-C", str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    out = (tmp_path / "out").read_text()
    assert "JOINED jobserver WIDTH 2" in out, out + proc.stderr

"""The node budget's locks against user code (issue 17, item 6): a process that reads
its own node file keeps its tokens, so another process does not run beside it on
tokens it still counts."""

from conftest import run_python

READS_ITS_FILE = """
import os, subprocess, sys, time
import budget

path = budget.share_node(2)
try:
    with budget.region() as r:
        deadline = time.monotonic() + 20
        while budget.joined()["held"] < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        print("holder width", r.width, "held", budget.joined()["held"], flush=True)
        # What a user may do with the path budget hands out: read it, and close it.
        assert open(path).read().startswith("budget-node")
        with open(path, "rb") as f:
            f.read(16)
        other = subprocess.run(
            [sys.executable, "-c",
             "import budget\\n"
             "with budget.region() as r:\\n"
             "    print('other width', r.width, 'held', budget.joined()['held'])"],
            env=dict(os.environ, BUDGET_NODE=path, BUDGET_NUM_THREADS="2"),
            capture_output=True, text=True, timeout=60,
        )
        print(other.stdout.strip(), other.stderr.strip()[-500:], flush=True)
        print("holder still holds", budget.joined()["held"], flush=True)
finally:
    os.remove(path)
"""


def test_reading_the_node_file_keeps_this_processs_tokens():
    r = run_python(READS_ITS_FILE, env={"BUDGET_NUM_THREADS": "2"}, timeout=120)
    assert r.returncode == 0, (r.stdout, r.stderr[-3000:])
    assert "holder width 2 held 2" in r.stdout, r.stdout
    # The other process gets only its own thread: the holder's 2 tokens are still its.
    assert "other width 1 held 1" in r.stdout, r.stdout
    assert "holder still holds 2" in r.stdout, r.stdout

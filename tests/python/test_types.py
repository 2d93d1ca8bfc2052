"""The package's type information (budget/_budget.pyi, py.typed) as mypy reads it: the
package checks (mypy follows the import), a user's correct code checks, and a wrong call is reported."""

import os
import subprocess
import sys


def mypy(tmp_path, code):
    sample = tmp_path / "sample.py"
    sample.write_text(code)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--python-version", "3.11", "--ignore-missing-imports",
         "--no-incremental", str(sample)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


def test_the_stubs_type_a_users_code(tmp_path):
    good = mypy(
        tmp_path,
        """
import budget
with budget.region(2) as r:
    w: int | None = r.width
with budget.limit({"blas": 1}) as l:
    n: int | None = l.width
@budget.limit(1)
def f() -> int:
    return 1
path: str = budget.share_node(2, children_only=True)
total: int = budget._budget.MAX_THREADS
""",
    )
    assert good.returncode == 0, good.stdout + good.stderr
    bad = mypy(tmp_path, "import budget._budget as b\nb.Region('two')\nb.create_node(children_only='yes')\n")
    assert bad.returncode == 1, bad.stdout
    assert "sample.py:2: error" in bad.stdout and "sample.py:3: error" in bad.stdout, bad.stdout

"""One parallelism budget for NumPy, SciPy and scikit-learn.

The process has one budget of core tokens (``BUDGET_NUM_THREADS`` or the CPUs it may
use). Python threads take widths from it, and every BLAS / OpenMP library loaded in
the process (NumPy's and SciPy's OpenBLAS, scikit-learn's libgomp, MKL, BLIS) is set
to that width for the block::

    import budget
    import numpy as np
    from concurrent.futures import ThreadPoolExecutor

    def work(a):
        with budget.region() as r:      # r.width: decided now, from what is free
            return np.linalg.svd(a)     # OpenBLAS runs on r.width threads

    with ThreadPoolExecutor(4) as ex:   # 4 threads share the cores, no oversubscription
        list(ex.map(work, [np.ones((256, 256))] * 16))

- :func:`region`: a width from the budget for a ``with`` block on any thread; tokens
  are given back at exit, blocks may exit in any order, nothing waits holding the GIL.
- :func:`limit`: ``threadpoolctl.threadpool_limits(n)``, safe from many threads.
- :func:`threadpool_info`: the libraries found, in threadpoolctl's format.
- :func:`stats`: the budget's counters.
- :func:`share_node`, :func:`joined`: one budget shared by processes (``BUDGET_NODE``).
- :data:`MAX_THREADS`: the largest budget, in tokens (4096).

budget registers itself with threadpoolctl (when it is installed) as a controller of
its own: ``threadpoolctl.threadpool_info()`` lists it with the budget's total as
``num_threads``, and ``threadpool_limits(n)`` caps the width of regions opened while
the limit holds.
"""

from __future__ import annotations

import os as _os

from . import _budget
from ._budget import MAX_THREADS, Limit, Region
from ._info import threadpool_info

__all__ = [
    "MAX_THREADS",
    "Limit",
    "Region",
    "joined",
    "limit",
    "region",
    "share_node",
    "stats",
    "threadpool_info",
]
__version__ = "0.1.0"


def region(max_threads: int | None = None) -> Region:
    """A budget region for a ``with`` block on the current thread.

    At entry the region takes its width ``r.width``: the calling thread's own token
    plus up to ``max_threads - 1`` free ones (``None``: the whole budget; capped by a
    ``threadpoolctl.threadpool_limits`` in force), without waiting. Regions opened on
    other threads meanwhile get what is left; regions opened after it ends get the
    cores back. Every BLAS and OpenMP library loaded at entry is set to the width for
    the block (per thread where the library allows, under one process-wide lock
    otherwise) and restored exactly at exit, also when the block raises. A library
    loaded inside a block is sized from the next block on.

    A thread that finds every token taken still runs, at width 1 (counted as
    ``stats()["overcommit"]``), and its own token is owed: the next token given back
    pays for it before a region opened later can take it. Blocks may exit in any order (generators, coroutines),
    but each must exit on the thread that entered it (``RuntimeError`` otherwise).

    ``max_threads`` must be a whole number of at least 1, or ``None``: ``0``, ``-1``
    and ``True`` raise ``ValueError`` naming the argument.

    >>> import budget
    >>> with budget.region(2) as r:
    ...     1 <= r.width <= 2
    True
    >>> budget.stats()["in_use"]  # every token back
    0
    >>> budget.region(0)
    Traceback (most recent call last):
    ...
    ValueError: budget.region: max_threads must be a whole number of at least 1 (or None), not 0
    """
    return Region(max_threads)


def limit(n: int | None) -> Limit:
    """Every loaded BLAS and OpenMP library limited to ``n`` threads for a block.

    Like ``threadpoolctl.threadpool_limits(n)``, but safe from any number of threads
    at once: per-thread settings are changed on the calling thread only; process-wide
    ones (OpenBLAS on pthreads, BLIS) under one lock, the smallest limit in flight
    winning. Every count is restored exactly at exit, also when the block raises. It
    takes no tokens from the budget.

    ``limit(None)`` changes nothing, as ``threadpool_limits(None)``; ``0``, ``-1`` and
    ``True`` raise ``ValueError``.

    >>> import budget
    >>> with budget.limit(1) as l:
    ...     l.width
    1
    >>> budget.limit(2)
    <budget.limit n=2 (closed)>
    """
    return Limit(n)


def stats() -> dict:
    """The budget's counters as a dict.

    ``total`` (cores in the budget), ``in_use`` (tokens held now), ``peak_in_use``,
    ``leased`` (tokens held by leases: native pools, your own), ``regions`` (Rust and
    Python regions entered), ``grants_below_request`` (regions that got less than they
    asked for) and why, each counted under the first cause that applies:
    ``narrowed_by_processes`` (other processes held the shared budget's tokens),
    ``narrowed_by_leases``, ``narrowed_by_regions`` (other regions of this process);
    ``tokens_regrown``, ``overcommit`` (regions of a thread that found no token free),
    ``worker_threads`` and ``cap`` (a ``threadpool_limits`` cap on region widths, or
    ``None``).

    >>> import budget
    >>> s = budget.stats()
    >>> s["total"] >= 1 and s["in_use"] <= s["total"]
    True
    """
    return _budget.stats()


def joined() -> dict:
    """The outside budget this process shares: ``{"kind": "local"}``,
    ``{"kind": "node", "path": ..., "tokens": N}`` (``BUDGET_NODE``, ``budget run``,
    :func:`share_node`) or ``{"kind": "jobserver", ...}`` (GNU make), with ``held``,
    the tokens it holds now. Starts the budget if nothing did yet.

    >>> import budget
    >>> budget.joined()["kind"] in ("local", "node", "jobserver")
    True
    """
    return _budget.joined()


def share_node(tokens: int | None = None, path: str | None = None) -> str:
    """Makes a node budget of ``tokens`` (default: this process's budget total, the
    ``total`` of :func:`stats`: ``BUDGET_NUM_THREADS``, Slurm's
    ``SLURM_CPUS_PER_TASK``, the CPU quota or the CPUs it may use) and sets
    ``BUDGET_NODE`` to it, so that processes started from now on that use budget
    (multiprocessing and joblib/loky workers, subprocesses) share those tokens, and
    this process too if its budget has not started yet (call it before any region).
    Returns the node file's path: ``path`` made absolute, or a file named after this
    process in budget's node directory (``$XDG_RUNTIME_DIR/budget``, else
    ``/dev/shm/budget-$UID`` or the temp directory's). A file already there is shared
    as it is. Tokens are byte-range locks on that file: a worker that dies, however it
    dies, gives its tokens back.

    In a process sharing a node budget, a region that finds too few tokens starts at
    once with what the process holds (its own thread at least) and registers what it
    lacks: the node's tokens that come free while it runs are fetched for it and serve
    the process's next region; it never waits for them.

    Raises ``ValueError`` when ``tokens`` is not from 1 to :data:`MAX_THREADS` (nothing
    is made then), ``FileExistsError`` when ``path`` holds a file that is not a node
    budget file (left as it is), and ``OSError`` naming the path when the file cannot
    be made.

    >>> import budget
    >>> budget.share_node(budget.MAX_THREADS + 1)
    Traceback (most recent call last):
    ...
    ValueError: budget.share_node: tokens must be a whole number from 1 to 4096 (budget.MAX_THREADS), not 4097
    """
    node_path, _ = _budget.create_node(tokens, path)
    _os.environ["BUDGET_NODE"] = node_path
    return node_path


def _after_fork_in_child() -> None:
    # libgomp keeps its parent's thread team, which does not exist in a forked child:
    # a parallel region of more than one thread there never finishes. A child that
    # inherited a libgomp runs its OpenMP (and so its regions) at width 1.
    from ._info import _gomp_single_thread

    if _gomp_single_thread():
        _budget.set_fork_cap(1)


if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_after_fork_in_child)


def _gives_tokens_back_first(end):
    # os._exit (how multiprocessing's fork workers end) and exec run no atexit
    # handler: without this, make's jobserver tokens this process holds would be lost
    # (make: "INTERNAL: Exiting with 1 jobserver tokens available; should be 3!").
    def wrapper(*args, **kwargs):
        _budget.release_outside_tokens()
        return end(*args, **kwargs)

    wrapper.__name__ = end.__name__
    wrapper.__qualname__ = end.__qualname__
    wrapper.__doc__ = end.__doc__
    wrapper.__wrapped__ = end
    return wrapper


# os.execl*, os.execvp* and os.execlp* call these two through the os module.
for _name in ("_exit", "execv", "execve"):
    if hasattr(_os, _name) and not hasattr(getattr(_os, _name), "__wrapped__"):
        setattr(_os, _name, _gives_tokens_back_first(getattr(_os, _name)))
del _name

from . import _threadpoolctl  # noqa: E402  (registers the controller)

del _threadpoolctl

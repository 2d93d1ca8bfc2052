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
import sysconfig as _sysconfig

if _sysconfig.get_config_var("Py_GIL_DISABLED"):
    raise ImportError(
        "budget-threads does not support free-threaded CPython (3.13t, 3.14t) yet: its "
        "module is built for the stable ABI (abi3), which free-threaded interpreters "
        "cannot load. Use a CPython build with the GIL for now."
    )

from . import _budget
from ._budget import MAX_THREADS, Limit, Region
from ._info import threadpool_info

__all__ = [
    "MAX_THREADS",
    "Limit",
    "Region",
    "ThreadLimit",
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


def limit(limits=None, user_api: str | None = None) -> "ThreadLimit":
    """BLAS and OpenMP libraries limited for a block, as threadpoolctl's
    ``threadpool_limits(limits, user_api)``, but safe from any number of threads at
    once: per-thread settings are changed on the calling thread only; process-wide
    ones (OpenBLAS on pthreads, BLIS) under one lock, the smallest limit in flight
    winning. Every count is restored exactly at exit, also when the block raises. It
    takes no tokens from the budget. The libraries are those loaded when the block
    starts.

    ``limits`` is, as in threadpoolctl:

    - an int ``n``: every library (or those of ``user_api``, ``"blas"`` or
      ``"openmp"``) at ``n`` threads;
    - a dict, by ``user_api`` or by library prefix (``{"blas": 1}``,
      ``{"libgomp": 2, "libscipy_openblas": 1}``; a prefix wins over its API), or the
      list :func:`threadpool_info` returns;
    - ``"sequential_blas_under_openmp"``: BLAS at 1, unless an OpenBLAS built on
      OpenMP is loaded (which sizes itself under OpenMP);
    - ``None``: a block that changes nothing.

    A region opened inside a limit of every library gets no more than its count; inside
    a limit of some libraries (``{"blas": 1}``) those libraries keep that count. The
    result is a context manager and a decorator (each call of the decorated function
    runs in a block of its own). Unlike ``threadpool_limits``, nothing is set before
    the ``with`` block (or the decorated call) starts.

    ``0``, ``-1`` and ``True`` as counts raise ``ValueError``, as do an unknown
    ``user_api`` or dict key (threadpoolctl ignores unknown keys; a typo should not
    pass silently). Dict keys match a library by file path, then by prefix (exactly),
    then by ``user_api``, as threadpoolctl matches them.

    >>> import budget
    >>> with budget.limit(1) as l:
    ...     l.width
    1
    >>> budget.limit(2)
    <budget.limit n=2 (closed)>
    >>> @budget.limit({"blas": 1})
    ... def solve():
    ...     return "BLAS on one thread here"
    >>> solve()
    'BLAS on one thread here'
    """
    return ThreadLimit(limits, user_api)


_USER_APIS = ("blas", "openmp")
_KNOWN_PREFIXES = (
    "libopenblas",
    "libscipy_openblas",
    "openblas",
    "libblis",
    "libmkl_rt",
    "mkl_rt",
    "libflexiblas",
    "libiomp",
    "libgomp",
    "libomp",
    "vcomp",
)


def _is_path(key) -> bool:
    return isinstance(key, str) and _os.sep in key


class ThreadLimit:
    """The block :func:`limit` returns (see there)."""

    __slots__ = ("_limits", "_user_api", "_n", "_open")

    def __init__(self, limits=None, user_api=None):
        if user_api is not None and user_api not in _USER_APIS:
            raise ValueError(
                f"budget.limit: user_api must be one of {_USER_APIS} or None, not {user_api!r}"
            )
        if isinstance(limits, list):  # threadpool_info()'s format: by file, as threadpoolctl
            limits = {
                lib.get("filepath", lib.get("prefix")): lib["num_threads"]
                for lib in limits
                if lib.get("user_api") in _USER_APIS
            }
        if isinstance(limits, dict):
            for key, value in limits.items():
                if not (key in _USER_APIS or key in _KNOWN_PREFIXES or _is_path(key)):
                    raise ValueError(
                        f"budget.limit: {key!r} is neither a user_api {_USER_APIS}, a "
                        f"library prefix {_KNOWN_PREFIXES} nor a library's file path"
                    )
                if value is not None:
                    Limit(value)  # the count's checks, with their message
        elif isinstance(limits, str):
            if limits != "sequential_blas_under_openmp":
                raise ValueError(
                    "budget.limit: limits must be an int, a dict, a list of "
                    "threadpool_info() entries, 'sequential_blas_under_openmp' or None, "
                    f"not {limits!r}"
                )
        elif limits is not None:
            Limit(limits)  # ValueError / TypeError naming `n`
        self._limits = limits
        self._user_api = user_api
        # The plain form: one count for every library (what `width` reports).
        self._n = limits if (user_api is None and not isinstance(limits, (dict, str))) else None
        self._open = None

    @property
    def width(self):
        """The thread count this block sets for every library (``None`` when it sets
        none, or several)."""
        return self._n

    def _groups(self):
        """[(count, library paths or None for all)] for the libraries loaded now. Read
        from the native layer's list (no call into a library); the paths are the
        loader's, as the native limit matches them."""
        from ._info import _controlled, _identity

        limits, user_api = self._limits, self._user_api
        if limits is None:
            return []
        libs = _controlled()
        if isinstance(limits, str):  # sequential_blas_under_openmp
            if any(
                lib["family"] == "openblas" and lib["threading_layer"] == "openmp"
                for lib in libs
            ):
                return []
            limits, user_api = 1, "blas"
        if not isinstance(limits, dict):
            if user_api is None:
                return [(limits, None)]
            limits = {user_api: limits}
        groups = {}
        for lib in libs:
            named = _identity(lib)
            # As threadpoolctl matches them: the file, then the prefix, then the API.
            for key in (named["filepath"], named["prefix"], named["user_api"]):
                if key in limits:
                    count = limits[key]
                    break
            else:
                continue
            if count is not None:
                groups.setdefault(count, []).append(lib["path"])
        return sorted(groups.items())

    def __enter__(self):
        if self._open is not None:
            raise RuntimeError(
                "this budget.limit is already open: make a new budget.limit(...) for a nested block"
            )
        blocks = []
        try:
            for count, paths in self._groups():
                block = Limit(count) if paths is None else Limit(count, paths)
                block.__enter__()
                blocks.append(block)
        except BaseException:
            for block in reversed(blocks):
                block.__exit__(None, None, None)
            raise
        self._open = blocks
        return self

    def __exit__(self, *exc):
        blocks, self._open = self._open, None
        for block in reversed(blocks or []):
            block.__exit__(*exc)
        return False

    def __call__(self, func):
        import functools

        limits, user_api = self._limits, self._user_api

        @functools.wraps(func)
        def limited(*args, **kwargs):
            with ThreadLimit(limits, user_api):
                return func(*args, **kwargs)

        return limited

    def __repr__(self):
        state = "open" if self._open is not None else "closed"
        if self._n is not None or self._limits is None:
            return f"<budget.limit n={self._n} ({state})>"
        api = "" if self._user_api is None else f" user_api={self._user_api!r}"
        return f"<budget.limit limits={self._limits!r}{api} ({state})>"


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


def share_node(
    tokens: int | None = None, path: str | None = None, *, children_only: bool = False
) -> str:
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

    One node budget per process: calling it again with the same count returns the
    same path. This process joins the node too, which a running budget cannot do: call
    it before the first region (or ``limit``, ``stats()``, ``joined()``), or pass
    ``children_only=True`` to share the node with processes started from now on only.

    Raises ``ValueError`` when ``tokens`` is not from 1 to :data:`MAX_THREADS` (nothing
    is made then; ``True`` is refused too), ``RuntimeError`` when this process's budget
    already started (without ``children_only``) or when it already shares a node budget
    of another count, ``FileExistsError`` when ``path`` holds a file that is not a node
    budget file (left as it is), and ``OSError`` naming the path when the file cannot
    be made.

    >>> import budget
    >>> budget.share_node(budget.MAX_THREADS + 1)
    Traceback (most recent call last):
    ...
    ValueError: budget.share_node: tokens must be a whole number from 1 to 4096 (budget.MAX_THREADS), not 4097
    """
    node_path, _ = _budget.create_node(tokens, path, children_only)
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


def _register_joblib_backend() -> None:
    try:
        # Registers "budget" at the end of its import (also when joblib was imported
        # by importing budget._joblib itself: then this returns the module half made).
        from . import _joblib  # noqa: F401
    except Exception as e:  # a joblib too old or too new: joblib itself still works
        import warnings

        warnings.warn(f"budget: the joblib backend is not available: {e!r}", stacklevel=2)


class _JoblibHook:
    """Registers the ``"budget"`` joblib backend right after joblib is imported, so
    that ``import budget`` does not import joblib (~100 ms) to offer it."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != "joblib":
            return None
        import importlib.util
        import sys

        sys.meta_path[:] = [f for f in sys.meta_path if f is not cls]
        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module):
            run(module)
            _register_joblib_backend()

        loader.exec_module = exec_module
        return spec


def _offer_joblib_backend() -> None:
    import sys

    if "joblib" in sys.modules:
        _register_joblib_backend()
    elif _JoblibHook not in sys.meta_path:
        sys.meta_path.insert(0, _JoblibHook)


_offer_joblib_backend()

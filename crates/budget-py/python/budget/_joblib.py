"""The joblib backend ``"budget"``: every task in a budget region, in threads of this
process or in loky worker processes that share one node budget.

Registered when joblib is imported (``import budget`` does not import joblib)::

    import joblib, budget
    with joblib.parallel_config(backend="budget"):
        GridSearchCV(HistGradientBoostingClassifier(), grid, n_jobs=2).fit(X, y)

- **Processes** (the default, as joblib's own default is loky): the workers are loky's,
  started with ``BUDGET_NODE`` naming a node budget of this process's total, which they
  all share. Each task (a joblib batch) runs in ``budget.region()``, so its BLAS and
  OpenMP libraries get the width that is free when it starts: one core each while all
  workers are busy, the whole node for a task that runs alone at the end. The node file
  is made at the first process-based call (reused if this process already shares one:
  ``budget run``, ``BUDGET_NODE``, :func:`budget.share_node`) and removed when this
  process exits; loky keeps its workers between calls, with the same node. That first
  call starts this process's budget (as ``n_jobs=-1`` does: it reads the total), so
  call :func:`budget.share_node` before it if this process should join a node too.
- **Threads** (``prefer="threads"`` or ``require="sharedmem"``): joblib's thread pool,
  each task in a region of this process's budget.
- **Nested** ``Parallel`` inside a task: threads, its ``n_jobs`` capped at the width of
  the region the task runs in (``joblib.effective_n_jobs(-1)`` reads it), each nested
  task in a region of its own.
- ``n_jobs=-1`` means the budget's total (``budget.stats()["total"]``: cgroup quota,
  Slurm, ``BUDGET_NUM_THREADS``), ``-2`` one less, as joblib documents.
- ``inner_max_num_threads=k`` keeps joblib's meaning: the workers' thread variables
  (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ...) are set to ``k``, a cap on every
  region width there. Without it none is set (joblib's loky backend sets them to
  ``cpu_count() // n_jobs``, which would pin every task to that width).
"""

from __future__ import annotations

import atexit
import os
import threading

from joblib._parallel_backends import (
    FallbackToBackend,
    LokyBackend,
    SequentialBackend,
    ThreadingBackend,
)
from joblib.parallel import register_parallel_backend

from . import _budget, region

__all__ = ["BudgetBackend", "register", "region_width"]

_local = threading.local()


def region_width() -> int | None:
    """The width of the innermost backend task's region on this thread, or ``None``."""
    widths = getattr(_local, "widths", None)
    return widths[-1] if widths else None


class _InRegion:
    """A joblib batch run inside ``budget.region()`` (picklable: loky sends it), no
    wider than its fair share of the tasks in flight when it starts (see
    :class:`_InFlight`)."""

    __slots__ = ("func", "n_jobs", "counter")

    def __init__(self, func, n_jobs, counter):
        self.func = func
        self.n_jobs = n_jobs
        self.counter = counter

    def __call__(self):
        widths = getattr(_local, "widths", None)
        if widths is None:
            widths = _local.widths = []
        busy = min(self.n_jobs, max(1, _read_in_flight(self.counter)))
        with region(max(1, _total() // busy)) as r:
            widths.append(r.width)
            try:
                return self.func()
            finally:
                widths.pop()


class _InFlight:
    """The backend's tasks submitted and not yet done, in this process (threads) or
    in a small file the loky workers read (processes).

    A task's width is fixed when it starts (its BLAS and OpenMP teams are sized then),
    so it must not take the whole budget only because it started a moment before the
    others of its call: it takes at most ``total // min(n_jobs, tasks in flight)``.
    While a call's tasks queue, that is the static split (loky's own default); a task
    that starts when the others are done takes the whole budget (the tail widens).
    Only the parent writes the count (under a lock); workers read one aligned 32-bit
    word.
    """

    def __init__(self, path=None):
        self._lock = threading.Lock()
        self._count = 0
        self._map = None
        self.path = path
        if path is not None:
            import mmap

            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.ftruncate(fd, 4)
                self._map = mmap.mmap(fd, 4)
            finally:
                os.close(fd)

    def add(self, n):
        with self._lock:
            self._count = max(0, self._count + n)
            if self._map is not None:
                self._map[0:4] = self._count.to_bytes(4, "little")
            return self._count

    def value(self):
        return self._count

    def submit(self, submit, func, callback, n_jobs, live):
        """Submits ``func`` wrapped in its region; ``live`` is the backend's set of
        tickets, which its ``abort_everything`` releases (tasks dropped from a queue
        never report done)."""
        ticket = _Ticket(self)
        live.add(ticket)
        self.add(1)
        counter = self if self.path is None else self.path

        def done(out):
            ticket.release()
            live.discard(ticket)
            if callback is not None:
                callback(out)

        try:
            return submit(_InRegion(func, n_jobs, counter), done)
        except BaseException:
            ticket.release()
            live.discard(ticket)
            raise


class _Ticket:
    """One submitted task's place in the count: given back once, by its completion
    or by its backend's abort, whichever comes first."""

    __slots__ = ("_counter", "_open")

    def __init__(self, counter):
        self._counter = counter
        self._open = True

    def release(self):
        with self._counter._lock:
            if not self._open:
                return
            self._open = False
        self._counter.add(-1)


def _release_all(live):
    for ticket in list(live):
        ticket.release()
    live.clear()


_THREADS_IN_FLIGHT = _InFlight()
_worker_maps: dict = {}


def _read_in_flight(counter) -> int:
    """Tasks in flight: a counter of this process, or the parent's file (a worker)."""
    if isinstance(counter, _InFlight):
        return counter.value()
    m = _worker_maps.get(counter)
    if m is None:
        import mmap

        try:
            fd = os.open(counter, os.O_RDONLY)
        except OSError:
            return 1
        try:
            m = _worker_maps[counter] = mmap.mmap(fd, 4, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
    return int.from_bytes(m[0:4], "little")


_TOTAL = 0  # the budget's total, read once (it is fixed when the budget starts)


def _total() -> int:
    global _TOTAL
    if not _TOTAL:
        _TOTAL = int(_budget.stats()["total"])
    return _TOTAL


def _resolve(n_jobs) -> int:
    """joblib's ``n_jobs`` against the budget: ``-1`` is the total, ``-2`` one less."""
    if n_jobs == 0:
        raise ValueError("n_jobs == 0 in Parallel has no meaning")
    if n_jobs is None:
        return 1
    n_jobs = int(n_jobs)
    if n_jobs < 0:
        return max(_total() + 1 + n_jobs, 1)
    return n_jobs


def _capped(n: int) -> int:
    """``n`` no wider than the region the calling thread's task runs in, if any."""
    width = region_width()
    return n if width is None else max(1, min(n, width))


class _InRegions:
    """What both flavours add to joblib's backend: each batch submitted in its region,
    counted in flight until done or aborted, and nested calls on budget threads."""

    def _in_flight(self) -> "_InFlight":
        raise NotImplementedError

    def _jobs(self) -> int:
        raise NotImplementedError

    def submit(self, func, callback=None):
        live = self.__dict__.setdefault("_live", set())
        return self._in_flight().submit(super().submit, func, callback, self._jobs(), live)

    def abort_everything(self, ensure_ready=True):
        # The tasks dropped from the queue (threads) or killed with the workers
        # (processes) never report done: this call's are released here.
        _release_all(self.__dict__.get("_live", ()))
        super().abort_everything(ensure_ready=ensure_ready)

    def get_nested_backend(self):
        return _BudgetThreads(nesting_level=self.nesting_level + 1), None


class _BudgetThreads(_InRegions, ThreadingBackend):
    """joblib's thread pool, each task in a budget region of this process."""

    def effective_n_jobs(self, n_jobs):
        return _capped(_resolve(n_jobs))

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **kwargs):
        return super().configure(n_jobs=n_jobs, parallel=parallel, **kwargs)

    def _in_flight(self):
        return _THREADS_IN_FLIGHT

    def _jobs(self):
        return self._n_jobs


# The node budget the workers share, and the count of tasks in flight they read:
# made once per process, at the first process-based call; forgotten in a forked child.
_node_lock = threading.Lock()
_node: tuple[str, _InFlight] | None = None


def _worker_node() -> tuple[str, _InFlight]:
    """The node budget file loky workers get as ``BUDGET_NODE`` and the in-flight
    count beside it. The node is the one this process joined (``BUDGET_NODE``,
    ``budget run``, :func:`budget.share_node`), else the one it shares with its
    children (``share_node(children_only=True)``), else one made now of this process's
    total, removed when this process exits."""
    global _node
    with _node_lock:
        if _node is None:
            joined = _budget.joined()  # starts this process's budget if nothing did
            inherited = os.environ.get("BUDGET_NODE", "")
            if joined.get("kind") == "node":
                path = joined["path"]
            elif os.path.isfile(inherited):
                path = inherited
            else:
                path, _ = _budget.create_node(None, None, True)
                atexit.register(_remove_file, path, os.getpid())
            busy = os.path.join(
                os.path.dirname(os.path.abspath(path)), f"joblib-{os.getpid()}.busy"
            )
            atexit.register(_remove_file, busy, os.getpid())
            _node = (path, _InFlight(busy))
        return _node


def _remove_file(path: str, owner: int) -> None:
    if os.getpid() != owner:  # a forked child's exit leaves its parent's files alone
        return
    try:
        os.remove(path)
    except OSError:
        pass


def _forget_in_child() -> None:
    # A forked child starts its own count (and its own node, if it uses the backend):
    # the parent's belong to the parent.
    global _node, _THREADS_IN_FLIGHT, _TOTAL
    _node = None
    _THREADS_IN_FLIGHT = _InFlight()
    _TOTAL = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


class BudgetBackend(_InRegions, LokyBackend):
    """The ``"budget"`` joblib backend (see the module's documentation)."""

    supports_sharedmem = True  # by falling back to threads, as joblib asks

    def effective_n_jobs(self, n_jobs):
        n = super().effective_n_jobs(n_jobs)  # loky's rules: daemons, non-main threads
        return 1 if n == 1 else _capped(_resolve(n_jobs))

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **kwargs):
        if prefer == "threads" or require == "sharedmem":
            raise FallbackToBackend(_BudgetThreads(nesting_level=self.nesting_level))
        if self.effective_n_jobs(n_jobs) == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self._budget_n_jobs = super().configure(
            n_jobs=n_jobs, parallel=parallel, prefer=prefer, require=require, **kwargs
        )
        return self._budget_n_jobs

    def _prepare_worker_env(self, n_jobs):
        env = {"BUDGET_NODE": _worker_node()[0]}
        if self.inner_max_num_threads is not None:
            # joblib's documented knob: a cap on the workers' libraries.
            for var in self.MAX_NUM_THREADS_VARS:
                env[var] = str(self.inner_max_num_threads)
        return env

    def _in_flight(self):
        return _worker_node()[1]

    def _jobs(self):
        return self._budget_n_jobs


def register() -> None:
    """Registers ``"budget"`` with joblib (done when joblib is imported)."""
    register_parallel_backend("budget", BudgetBackend)


register()

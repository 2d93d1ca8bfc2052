"""budget as a threadpoolctl controller (threadpoolctl's documented API for
third-party libraries: subclass ``LibController``, then ``threadpoolctl.register``).

threadpoolctl finds controllers by the file names of the shared objects mapped in the
process. budget's native module, ``_budget.abi3.so``, is one, so the controller
matches it by its file-name prefix and its ``PyInit__budget`` symbol:
``threadpoolctl.threadpool_info()`` then lists an entry ``user_api="budget"`` whose
``num_threads`` is the budget's total (or the cap in force), and
``threadpool_limits(n)`` (with no ``user_api``, or ``user_api="budget"``) caps the
width of regions opened while the limit holds; leaving it restores the previous cap.
"""

from __future__ import annotations

from . import _budget

try:
    import threadpoolctl
except ImportError:  # threadpoolctl is optional
    threadpoolctl = None


if threadpoolctl is not None and hasattr(threadpoolctl, "register"):

    class BudgetController(threadpoolctl.LibController):
        """threadpoolctl's view of the budget: a cap on the width of new regions."""

        user_api = "budget"
        internal_api = "budget"
        filename_prefixes = ("_budget",)
        check_symbols = ("PyInit__budget",)

        def get_num_threads(self):
            s = _budget.stats()
            return s["total"] if s["cap"] is None else min(s["cap"], s["total"])

        def set_num_threads(self, num_threads):
            total = _budget.stats()["total"]
            _budget.set_cap(None if num_threads is None or num_threads >= total else num_threads)

        def get_version(self):
            from . import __version__

            return __version__

    if not any(getattr(c, "internal_api", None) == "budget" for c in getattr(threadpoolctl, "_ALL_CONTROLLERS", ())):
        threadpoolctl.register(BudgetController)

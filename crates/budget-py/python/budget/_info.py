"""``threadpool_info()``: the libraries budget found, in threadpoolctl's format."""

from __future__ import annotations

import ctypes
import os

from . import _budget

# threadpoolctl's user_api / internal_api and file-name prefixes per family.
_USER_API = {
    "openblas": "blas",
    "blis": "blas",
    "mkl": "blas",
    "flexiblas": "blas",
    "openmp": "openmp",
}
_PREFIXES = {
    "openblas": ("libopenblas", "libscipy_openblas", "openblas"),
    "blis": ("libblis",),
    "mkl": ("libmkl_rt", "mkl_rt"),
    "flexiblas": ("libflexiblas",),
    "openmp": ("libiomp", "libgomp", "libomp", "vcomp"),
}
_MKL_LAYERS = {0: "intel", 1: "sequential", 2: "pgi", 3: "gnu", 4: "tbb", -1: "not specified"}


def _symbol(path: str, prefix: str, name: str, suffix: str):
    try:
        lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
    except OSError:
        return None
    return getattr(lib, f"{prefix}{name}{suffix}", None)


def _c_string(func):
    func.restype = ctypes.c_char_p
    value = func()
    return value.decode("utf-8") if value is not None else None


# The file each loader path names: libraries stay loaded, so it is read once each.
_REALPATHS: dict = {}


def _identity(lib: dict) -> dict:
    """How threadpoolctl names one library of ``_budget._libraries()``: ``user_api``,
    ``internal_api``, ``prefix`` and ``filepath`` (the file, symlinks resolved); no
    call into the library (``budget.limit`` matches its keys against these)."""
    family = lib["family"]
    path = _REALPATHS.get(lib["path"])
    if path is None:
        path = _REALPATHS[lib["path"]] = os.path.realpath(lib["path"])
    name = os.path.basename(path).lower()
    prefix = next((p for p in _PREFIXES.get(family, ()) if name.startswith(p)), name)
    return {
        "user_api": _USER_API.get(family, family),
        "internal_api": family,
        "prefix": prefix,
        "filepath": path,
    }


def _threadpoolctl_entry(lib: dict) -> dict:
    family = lib["family"]
    entry = _identity(lib)
    path = entry["filepath"]
    entry["num_threads"] = lib["num_threads"]
    entry["version"] = lib["version"]
    sp, ss = lib["symbol_prefix"], lib["symbol_suffix"]
    layer = lib["threading_layer"]
    if family in ("openblas", "blis"):
        entry["threading_layer"] = {"sequential": "disabled"}.get(layer, layer)
        if family == "openblas":
            corename = _symbol(path, sp, "openblas_get_corename", ss)
            entry["architecture"] = _c_string(corename) if corename else None
        else:
            query = _symbol(path, sp, "bli_arch_query_id", ss)
            string = _symbol(path, sp, "bli_arch_string", ss)
            if query and string:
                string.restype = ctypes.c_char_p
                entry["architecture"] = string(query()).decode("utf-8")
            else:
                entry["architecture"] = None
    elif family == "mkl":
        set_layer = _symbol(path, sp, "MKL_Set_Threading_Layer", ss)
        entry["threading_layer"] = _MKL_LAYERS.get(set_layer(-1)) if set_layer else layer
    return entry


def _controlled() -> list[dict]:
    """The libraries budget controls (``_budget._libraries()`` without the
    unsupported ones), as the native layer describes them."""
    return [lib for lib in _budget._libraries() if lib["unsupported"] is None]


def threadpool_info() -> list[dict]:
    """The BLAS and OpenMP libraries loaded in the process, as threadpoolctl lists them.

    One dict per library with threadpoolctl's keys: ``user_api`` (``"blas"`` or
    ``"openmp"``), ``internal_api`` (``"openblas"``, ``"blis"``, ``"mkl"``,
    ``"flexiblas"``, ``"openmp"``), ``prefix``, ``filepath``, ``version``,
    ``num_threads`` (as the calling thread sees it) and, where threadpoolctl gives
    them, ``threading_layer`` and ``architecture``. The same libraries with the same
    values as ``threadpoolctl.threadpool_info()`` in the same process (which also
    lists budget itself, see the package docs). Libraries found but not controllable
    (a missing symbol) are left out, as threadpoolctl leaves them out.

    >>> import budget, numpy
    >>> any(lib["user_api"] == "blas" for lib in budget.threadpool_info())
    True
    """
    return [_threadpoolctl_entry(lib) for lib in _controlled()]


def _gomp_single_thread() -> bool:
    """In a forked child: set every loaded libgomp to one thread on this (the only)
    thread; True if there was one.

    Reads /proc/self/maps rather than budget-native's scan: another thread of the
    parent may have held the scan's cache lock at the fork, and nothing here may wait
    on a lock the child's only thread cannot release."""
    try:
        with open("/proc/self/maps", "rb") as f:
            maps = f.read().decode("utf-8", "replace")
    except OSError:
        return False
    paths = {line.split(None, 5)[-1] for line in maps.splitlines() if "/libgomp" in line and len(line.split(None, 5)) == 6}
    found = False
    for path in paths:
        setter = _symbol(path, "", "omp_set_num_threads", "")
        if setter is not None:
            setter(1)
            found = True
    return found

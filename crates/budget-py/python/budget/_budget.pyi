"""Type stubs of budget's native module (``budget._budget``, built from crates/budget-py)."""

from os import PathLike
from types import TracebackType
from typing import Any, Optional, Union, type_check_only

MAX_THREADS: int

@type_check_only
class _Block:
    """A ``with`` block of the module (``Region``, ``Limit``)."""

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

class Region(_Block):
    """``budget.region(max_threads)``: a width from the budget for a ``with`` block."""

    def __init__(self, max_threads: Optional[int] = None) -> None: ...
    @property
    def width(self) -> Optional[int]: ...
    @property
    def requested(self) -> Optional[int]: ...
    @property
    def max_threads(self) -> Optional[int]: ...
    def __enter__(self) -> "Region": ...

class Limit(_Block):
    """One count for every loaded library, or for those at ``libraries`` (the loader's
    paths, as ``_libraries()`` lists them)."""

    def __init__(
        self,
        n: Optional[int],
        libraries: Optional[
            Union[list[Union[str, PathLike[str]]], tuple[Union[str, PathLike[str]], ...]]
        ] = None,
    ) -> None: ...
    @property
    def width(self) -> Optional[int]: ...
    def __enter__(self) -> "Limit": ...

def stats() -> dict[str, Any]: ...
def joined() -> dict[str, Any]: ...
def create_node(
    tokens: Optional[int] = None,
    path: Optional[Union[str, PathLike[str]]] = None,
    children_only: bool = False,
) -> tuple[str, int]: ...
def release_outside_tokens() -> None: ...
def set_cap(n: Optional[int]) -> None: ...
def set_fork_cap(n: int) -> None: ...
def depth() -> int: ...
def _libraries() -> list[dict[str, Any]]: ...

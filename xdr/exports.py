"""Public names of a subpackage, importable from the subpackage itself (`from xdr.index import
ShardedSearcher`) without importing every module of it up front: a module's heavy imports (torch, faiss)
happen on first use of one of its names."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package`: name -> the submodule (relative) that defines it."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    return __getattr__

"""Running the library's task functions as Ray tasks: the executor `xdr.validation.validate_corpus` uses.

A step submitted here returns Ray object references, which later steps receive as arguments: the data
passes between tasks in the object store and the driver only ever fetches counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray


def _only(fn: Callable) -> Callable:
    """The task functions return a list of values; Ray's single return is the value itself."""
    def run(*args):
        return fn(*args)[0]
    run.__name__ = run.__qualname__ = fn.__name__
    return run


class RayTasks:
    """Submit library functions as Ray tasks (retried on I/O errors and lost workers)."""

    def __init__(self, *, cpus_per_task: float = 1.0, max_retries: int = 2):
        self.options = {"num_cpus": cpus_per_task, "max_retries": max_retries, "retry_exceptions": [OSError]}
        self._remote: dict[tuple[Callable, int], Any] = {}

    def submit(self, fn: Callable, *args: Any, num_returns: int = 1) -> list[ray.ObjectRef]:
        key = (fn, num_returns)
        if key not in self._remote:
            self._remote[key] = ray.remote(fn if num_returns > 1 else _only(fn)).options(
                num_returns=num_returns, **self.options)
        refs = self._remote[key].remote(*args)
        return list(refs) if num_returns > 1 else [refs]

    def as_completed(self, handles: Sequence[ray.ObjectRef]) -> Iterator[tuple[int, Any]]:
        index = {ref: i for i, ref in enumerate(handles)}
        pending = list(handles)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield index[done[0]], ray.get(done[0])

    def get(self, handles: Sequence[ray.ObjectRef]) -> list[Any]:
        return ray.get(list(handles))

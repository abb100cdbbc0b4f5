"""Running the library's task functions as Ray tasks: the executor `xdr.validation.validate_corpus` uses.

A step submitted here returns a Ray object reference to its (small) result; the data itself passes
between steps through storage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray

from ray_jobs.common import as_finished


class RayTasks:
    """Submit library functions as Ray tasks (retried on I/O errors and lost workers)."""

    def __init__(self, *, cpus_per_task: float = 1.0, max_retries: int = 2):
        self.options = {"num_cpus": cpus_per_task, "max_retries": max_retries, "retry_exceptions": [OSError]}
        self._remote: dict[Callable, Any] = {}

    def submit(self, fn: Callable, *args: Any) -> ray.ObjectRef:
        if fn not in self._remote:
            self._remote[fn] = ray.remote(fn).options(**self.options)
        return self._remote[fn].remote(*args)

    def as_completed(self, handles: Sequence[ray.ObjectRef]) -> Iterator[tuple[int, Any]]:
        index = {ref: i for i, ref in enumerate(handles)}
        for ref in as_finished(handles, "validate"):
            yield index[ref], ray.get(ref)

    def get(self, handles: Sequence[ray.ObjectRef]) -> list[Any]:
        return [result for _, result in sorted(self.as_completed(handles), key=lambda done: done[0])]

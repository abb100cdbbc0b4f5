"""The library's executor (xdr.executor) as Ray tasks: what the validation, the index build and the index
tuning grid run on a cluster.

A step submitted here returns a Ray object reference to its (small) result; the data itself passes
between steps through storage. Steps are retried on I/O errors and lost workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray

from ray_jobs.common import as_finished
from xdr.executor import TaskOptions


class RayTasks:
    """Submit library functions as Ray tasks; `default` options for steps submitted without any."""

    def __init__(self, *, cpus_per_task: float = 1.0, max_retries: int = 2, label: str = "tasks"):
        self.default = TaskOptions(cpus=cpus_per_task, label=label)
        self.max_retries = max_retries
        self._remote: dict[tuple[Callable, TaskOptions], Any] = {}
        self._labels: dict[ray.ObjectRef, str] = {}

    def submit(self, fn: Callable, *args: Any, options: TaskOptions | None = None) -> ray.ObjectRef:
        options = options or self.default
        key = (fn, options)
        if key not in self._remote:
            extra = {"memory": options.memory_bytes} if options.memory_bytes else {}
            self._remote[key] = ray.remote(fn).options(
                num_cpus=options.cpus, num_gpus=options.gpus, max_retries=self.max_retries,
                retry_exceptions=[OSError], **extra)
        ref = self._remote[key].remote(*args)
        self._labels[ref] = options.label
        return ref

    def as_completed(self, handles: Sequence[ray.ObjectRef]) -> Iterator[tuple[int, Any]]:
        index = {ref: i for i, ref in enumerate(handles)}
        label = self._labels.get(handles[0], self.default.label) if handles else self.default.label
        for ref in as_finished(handles, label):
            yield index[ref], ray.get(ref)

    def get(self, handles: Sequence[ray.ObjectRef]) -> list[Any]:
        return [result for _, result in sorted(self.as_completed(handles), key=lambda done: done[0])]

    def share(self, value: Any) -> ray.ObjectRef:
        return ray.put(value)

    def gpus(self) -> float:
        return float(ray.cluster_resources().get("GPU", 0))

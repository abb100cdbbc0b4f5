"""How the library runs its independent steps: an executor takes a function and its arguments and returns
a handle; `as_completed` yields (position, result) as steps finish. The validation, the index build and
the index tuning grid are written against this interface, so the same sequence runs in one process
(`LocalExecutor`: tests, small inputs, benchmarks) or as Ray tasks (`ray_jobs.tasks.RayTasks`).

Steps pass data through storage and return small results; what a step needs of the machine (CPUs, GPUs,
memory) travels as `TaskOptions`, which the local executor ignores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class TaskOptions:
    cpus: float = 1.0
    gpus: float = 0.0
    memory_bytes: int | None = None  # a scheduler's reservation: keeps concurrent steps within a node's memory
    label: str = "tasks"  # names the steps in stall warnings


class Executor(Protocol):
    def submit(self, fn: Callable, *args: Any, options: TaskOptions | None = None) -> Any: ...

    def as_completed(self, handles: Sequence[Any]) -> Iterator[tuple[int, Any]]: ...

    def get(self, handles: Sequence[Any]) -> list[Any]: ...

    def share(self, value: Any) -> Any:
        """A large argument passed to many steps, stored once (Ray's object store) and passed by reference."""
        ...

    def gpus(self) -> float:
        """GPUs the steps can use now."""
        ...


class LocalExecutor:
    """Runs each step in this process when submitted, one after another."""

    def submit(self, fn: Callable, *args: Any, options: TaskOptions | None = None) -> Any:
        return fn(*args)

    def as_completed(self, handles: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        yield from enumerate(handles)

    def get(self, handles: Sequence[Any]) -> list[Any]:
        return list(handles)

    def share(self, value: Any) -> Any:
        return value

    def gpus(self) -> float:
        return 0.0

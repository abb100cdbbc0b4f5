"""Progress of a long job: rows done, rate and ETA. On a terminal a progress bar; elsewhere (a log file,
`ray job logs`) a line at most every `every_s` seconds, and always the last one."""

from __future__ import annotations

import time
from collections.abc import Callable


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    def __init__(self, label: str, total_rows: int, total_parts: int, *, every_s: float = 5.0,
                 emit: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
                 bar: bool = False):
        self.label, self.total_rows, self.total_parts = label, total_rows, total_parts
        self.every_s, self.emit, self.clock = every_s, emit, clock
        self.rows = self.parts = self.skipped_rows = 0
        self.start = self.clock()
        self._last_emit = float("-inf")
        self._bar = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_rows, desc=label, unit="row", unit_scale=True, dynamic_ncols=True)

    def update(self, rows: int, *, skipped: bool = False) -> None:
        self.rows += rows
        self.parts += 1
        if skipped:  # committed by an earlier run: not part of this run's rate
            self.skipped_rows += rows
        last = self.parts == self.total_parts
        if self._bar is not None:
            self._bar.update(rows)
            self._bar.set_postfix_str(f"parts {self.parts}/{self.total_parts}", refresh=False)
            if last:
                self._bar.close()
        if last or (self._bar is None and self.clock() - self._last_emit >= self.every_s):
            self.emit(self.line())
            self._last_emit = self.clock()

    @property
    def rate(self) -> float:
        elapsed = self.clock() - self.start
        return (self.rows - self.skipped_rows) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        left = self.total_rows - self.rows
        eta = format_duration(left / self.rate) if self.rate > 0 and left > 0 else ("0m00s" if left <= 0 else "?")
        resumed = f" ({self.skipped_rows:,} resumed)" if self.skipped_rows else ""
        return (f"[{self.label}] parts {self.parts}/{self.total_parts} · rows {self.rows:,}/{self.total_rows:,}"
                f"{resumed} · {self.rate:,.1f} rows/s · ETA {eta}")


class StallWatch:
    """Says so when no progress arrives for `stall_s` seconds (a worker stuck on a network retry, a GPU node
    that never comes), naming where to look; again after each further `stall_s` of silence. A context
    manager: a daemon thread watches while the block runs; call `touch()` on every sign of progress."""

    def __init__(self, label: str, stall_s: float, emit: Callable[[str], None], hint: str = "",
                 clock: Callable[[], float] = time.monotonic):
        import threading

        self.label, self.stall_s, self.emit, self.hint, self.clock = label, stall_s, emit, hint, clock
        self._last = self._warned = self.clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def touch(self) -> None:
        self._last = self.clock()

    def _watch(self) -> None:
        while not self._stop.wait(min(5.0, self.stall_s / 4)):
            now = self.clock()
            if now - self._last >= self.stall_s and now - self._warned >= self.stall_s:
                self._warned = now
                hint = f"; {self.hint}" if self.hint else ""
                self.emit(f"[{self.label}] no progress for {format_duration(now - self._last)}: the workers may be "
                          f"stuck (a model download retrying, a node that never started){hint}")

    def __enter__(self) -> StallWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

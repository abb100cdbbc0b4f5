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

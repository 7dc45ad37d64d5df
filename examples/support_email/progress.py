"""A live progress display: one redrawn line on a terminal, a line every tenth otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

#: Seconds between redraws on a terminal.
_REDRAW = 0.1


class Progress:
    """Counts finished (or parked) runs and shows done/total, rate, runs waiting for a person
    and failures as they change.

    Args:
        total: how many runs there are in all.
        done: how many of them had finished (or parked at a gate) before this session.
        failed: how many of those had failed.
        waiting: how many of those wait at a gate.
        stream: where to write (standard output by default).
    """

    def __init__(self, total: int, done: int = 0, failed: int = 0, waiting: int = 0,
                 stream: TextIO | None = None) -> None:
        self.total = total
        self.done = done
        self.session = 0
        self.failed = failed
        self.waiting = waiting
        self.stream = stream or sys.stdout
        self._live = self.stream.isatty()
        self._started = time.monotonic()
        self._shown_at = 0.0
        self._step = max(1, total // 10)
        self._next = (done // self._step + 1) * self._step

    @property
    def elapsed(self) -> float:
        """Seconds since the display started."""
        return time.monotonic() - self._started

    def record(self, status: str) -> None:
        """Count one finished (or parked) run with its status, and show the change when due."""
        self.done += 1
        self.session += 1
        if status == "failed":
            self.failed += 1
        elif status == "waiting":
            self.waiting += 1
        now = time.monotonic()
        if self._live and (now - self._shown_at >= _REDRAW or self.done == self.total):
            self._shown_at = now
            self.stream.write(f"\r{self.line()}")
            self.stream.flush()
        elif not self._live and (self.done >= self._next or self.done == self.total):
            self._next = (self.done // self._step + 1) * self._step
            print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        """The current state, e.g. `progress  120/240  50%  41.3 emails/s  waiting 40  failed 2`."""
        percent = 100 * self.done // self.total if self.total else 100
        rate = self.session / self.elapsed if self.elapsed > 0 else 0.0
        return (f"progress {self.done:>5}/{self.total}  {percent:3d}%  {rate:6.1f} emails/s  "
                f"waiting {self.waiting}  failed {self.failed}")

    def close(self) -> None:
        """End the redrawn line on a terminal."""
        if self._live:
            self.stream.write("\n")
            self.stream.flush()

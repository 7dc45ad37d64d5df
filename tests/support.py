"""Helpers shared by tests: a fake clock for deadlines, cooldowns and restart windows; a disk
filler; a command's stderr without its log lines; a command writing into a closed pipe."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fill(path: Path) -> None:
    """Write zeros to `path` until the disk is full."""
    with open(path, "wb") as file:
        try:
            while True:
                file.write(bytes(65536))
                file.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC


def without_logs(stderr: str) -> str:
    """`stderr` without its JSON log lines: what a command itself printed. A loaded machine
    may log `event_loop_blocked` (a warning) beside the error a test expects."""
    return "".join(line for line in stderr.splitlines(keepends=True) if not line.startswith("{"))


def into_a_closed_pipe(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`roost ARGS` (run in `cwd`) writing to a pipe whose reader is already gone, as
    `| head` leaves it."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "roost.runtime.cli", *args], cwd=cwd,
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=30)
    finally:
        os.close(write)

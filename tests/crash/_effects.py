"""The crash scripts' side effect: a line appended to a file and fsynced before the tool
returns, so a SIGKILL right after it cannot lose it and the test can count effects."""

from __future__ import annotations

import os
from pathlib import Path


def append(path: Path, line: str) -> None:
    """Append `line` to `path` and flush it to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)

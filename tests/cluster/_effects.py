"""The fault tests' side effect: an fsynced log keyed by the idempotency key, as a payment API
keyed by one is.

Every call that reaches it writes a line `KEY RUN NODE applied` or, for a key it has already
applied, `KEY RUN NODE duplicate` (the call changes nothing: a late call of a node fenced
out of the run). Lines are written under an exclusive lock and fsynced, so a SIGKILL right
after a call cannot lose it and the test can count effects across processes.
"""

from __future__ import annotations

import fcntl
import os
from collections import defaultdict
from pathlib import Path


def apply(path: Path, key: str, run: str, node: str) -> bool:
    """Apply the effect keyed `key` once: True if this call applied it, False if it was done."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        applied = key in applied_keys(path)
        outcome = "duplicate" if applied else "applied"
        os.write(fd, f"{key} {run} {node} {outcome}\n".encode())
        os.fsync(fd)
        return not applied
    finally:
        os.close(fd)  # releases the lock


def applied_keys(path: Path) -> set[str]:
    """The keys whose effect has been applied."""
    return {key for key, lines in read(path).items() if any(line[2] == "applied" for line in lines)}


def read(path: Path) -> dict[str, list[tuple[str, str, str]]]:
    """Every call per key, in order: (run, node, `applied` or `duplicate`)."""
    calls: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            key, run, node, outcome = line.rsplit(" ", 3)
            calls[key].append((run, node, outcome))
    return calls

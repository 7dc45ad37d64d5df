"""The ended-run index kept in the `runs` database, so the retention sweep reads only due runs.

An entry's key is `0xff + 8-byte big-endian end time in ms + run id` and its value is
empty; it is written in the same transaction as the status change that ends the run,
and deleted once the sweep has pruned that run's checkpoints. UTF-8 never yields the
byte 0xff, so these keys sort after every run id and none of them can be one: run
listings stop at `PREFIX`. The key `PREFIX` alone is the marker that runs which ended
before the index existed have been indexed (once per store).
"""

from __future__ import annotations

import math

from roost.errors import StoreError
from roost.storage._keys import SEQ_SIZE, pack_seq

PREFIX = b"\xff"
MARKER = PREFIX
#: The lowest index entry key: the due range of a sweep starts here.
FIRST = PREFIX + pack_seq(0)
_RUN_AT = len(PREFIX) + SEQ_SIZE


def entry_key(ended_at: float, run_key: bytes) -> bytes:
    """The index key of the run stored under `run_key` that ended at `ended_at` (seconds)."""
    return PREFIX + pack_seq(max(0, int(ended_at * 1000))) + run_key


def due_stop(cutoff: float) -> bytes:
    """The end (exclusive) of the index range of runs that ended at or before `cutoff`."""
    return PREFIX + pack_seq(max(0, math.floor(cutoff * 1000) + 1))


def run_id_of(key: bytes) -> str | None:
    """The run id of an index entry's key, or None if the key is not a well-formed entry."""
    if len(key) <= _RUN_AT or not key.startswith(PREFIX):
        return None
    try:
        return key[_RUN_AT:].decode()
    except UnicodeDecodeError:
        return None


def check_entry(key: bytes, value: bytes) -> None:
    """Check an index entry (or the marker) for `roost store check`.

    Raises:
        StoreError: it is malformed, naming its key and what is wrong.
    """
    if key != MARKER and run_id_of(key) is None:
        raise StoreError(
            f"run index entry at key {key!r} is malformed: an entry is 0xff, an 8-byte end "
            "time and a UTF-8 run id; it indexes no run, so delete it")
    if value:
        raise StoreError(f"run index entry at key {key!r} is malformed: its value should be "
                         f"empty but holds {len(value)} bytes; delete it")


"""Key layout helpers: big-endian sequence suffixes, prefix bounds and the last key under a prefix.

Keys sort bytewise in LMDB, so a prefix followed by an 8-byte big-endian sequence
number keeps every series in order: the latest entry of a series is one cursor seek
and the whole series is one forward scan.
"""

from __future__ import annotations

import struct

import lmdb

_SEQ = struct.Struct(">Q")
SEQ_SIZE = _SEQ.size


def pack_seq(seq: int) -> bytes:
    """The 8-byte big-endian form of a sequence number."""
    return _SEQ.pack(seq)


def unpack_seq(suffix: bytes) -> int:
    """The sequence number from its 8-byte big-endian form."""
    return int(_SEQ.unpack(suffix)[0])


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with `prefix` (None: no such key)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def key_range(prefix: bytes, start: bytes | None, stop: bytes | None) -> tuple[bytes, bytes | None]:
    """The half-open range `[low, high)` of keys under `prefix` and within `[start, stop)`.

    `high` is None when the range is unbounded above.
    """
    low = max(prefix, start) if start is not None else prefix
    high = prefix_end(prefix)
    if stop is not None and (high is None or stop < high):
        high = stop
    return low, high


def seek_last(cursor: lmdb.Cursor[bytes], prefix: bytes) -> bool:
    """Position `cursor` on the greatest key starting with `prefix`; False if there is none."""
    end = prefix_end(prefix)
    found = cursor.prev() if end is not None and cursor.set_range(end) else cursor.last()
    return found and cursor.key().startswith(prefix)

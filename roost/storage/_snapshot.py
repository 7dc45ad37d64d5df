"""A read transaction handed to a function that `Store.read` runs in a worker thread.

Reading several keys and ranges in one transaction gives answers that agree with each
other (one snapshot of the store) and costs one thread hop, where each `Store.scan`
chunk costs one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lmdb

from roost.storage._keys import key_range


class Snapshot:
    """One read transaction of a store, given to the function passed to `Store.read`."""

    __slots__ = ("_handle", "_txn")

    def __init__(self, txn: lmdb.Transaction[bytes],
                 handle: Callable[[str], lmdb._Database]) -> None:
        self._txn = txn
        self._handle = handle  # a database's handle by name (ConfigurationError if unknown)

    def get(self, db: str, key: bytes) -> bytes | None:
        """The value under `key` in database `db`, or None."""
        return self._txn.get(key, db=self._handle(db))

    def scan(self, db: str, *, prefix: bytes = b"", start: bytes | None = None,
             stop: bytes | None = None, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """`(key, value)` pairs in key order, as `Store.scan` has them (no limit: stop early)."""
        low, high = key_range(prefix, start, stop)
        cursor = self._txn.cursor(db=self._handle(db))
        if reverse:
            found = (cursor.prev() if high is not None and cursor.set_range(high)
                     else cursor.last())
            while found and cursor.key() >= low:
                yield cursor.item()
                found = cursor.prev()
        elif cursor.set_range(low):
            # The cursor's own iterator steps in C: one call per entry instead of three.
            for item in cursor.iternext():
                if high is not None and item[0] >= high:
                    return
                yield item

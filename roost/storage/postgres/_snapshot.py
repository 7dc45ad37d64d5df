"""A read transaction of a PostgreSQL store, given to the function `PostgresStore.read` runs.

The function runs in a worker thread (or, for `read_on_loop`, on the application's
loop), outside the I/O loop that owns the connection: each `get` and each chunk of a
`scan` is sent there and waited for. The transaction is `REPEATABLE READ, READ
ONLY`, so every read of one snapshot sees the same committed state, as one LMDB read
transaction does.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from roost.storage._keys import key_range
from roost.storage.postgres import _sql

T = TypeVar("T")

# Entries per round trip of a snapshot scan: callers often stop early.
_CHUNK = 128


class PostgresSnapshot:
    """One read transaction of a PostgreSQL store (the same reads as `roost.storage.Snapshot`)."""

    __slots__ = ("_check", "_connection", "_wait")

    def __init__(self, connection: Any, wait: Callable[[Coroutine[Any, Any, Any]], Any],
                 check: Callable[[str], None]) -> None:
        self._connection = connection
        self._wait = wait  # runs a coroutine on the I/O loop and blocks for its result
        self._check = check  # ConfigurationError for an unknown database

    def get(self, db: str, key: bytes) -> bytes | None:
        """The value under `key` in database `db`, or None."""
        self._check(db)
        value: bytes | None = self._wait(self._connection.fetchval(_sql.GET, db, key))
        return value

    def scan(self, db: str, *, prefix: bytes = b"", start: bytes | None = None,
             stop: bytes | None = None, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """`(key, value)` pairs in key order, as `Store.scan` has them (no limit: stop early)."""
        self._check(db)
        low, high = key_range(prefix, start, stop)
        while True:
            chunk: list[tuple[bytes, bytes]] = self._wait(
                _sql.fetch_range(self._connection, db, low, high, reverse, _CHUNK))
            yield from chunk
            if len(chunk) < _CHUNK:
                return
            if reverse:
                high = chunk[-1][0]
            else:
                low = chunk[-1][0] + b"\x00"  # the smallest key after it

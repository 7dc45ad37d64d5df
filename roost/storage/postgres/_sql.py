"""The read statements of a PostgreSQL store: point reads, range chunks, the last key under a
prefix. (The writes are in `_batch`.) Each function takes an asyncpg connection or pool
and runs on the store's I/O loop.
"""

from __future__ import annotations

from typing import Any

from roost.storage._keys import prefix_end
from roost.storage.postgres._schema import RECORDS_TABLE as _T

GET = f"SELECT value FROM {_T} WHERE db = $1 AND key = $2"


def _range(*, bounded: bool, reverse: bool) -> str:
    """A chunk of `[low, high)` in key order: $1 db, $2 low, $3 limit, $4 high if bounded."""
    return (f"SELECT key, value FROM {_T} WHERE db = $1 AND key >= $2"
            + (" AND key < $4" if bounded else "")
            + f" ORDER BY key {'DESC' if reverse else 'ASC'} LIMIT $3")


_RANGES = {(bounded, reverse): _range(bounded=bounded, reverse=reverse)
           for bounded in (False, True) for reverse in (False, True)}


async def fetch_range(connection: Any, db: str, low: bytes, high: bytes | None, reverse: bool,
                      size: int) -> list[tuple[bytes, bytes]]:
    """Up to `size` entries of `[low, high)` (`high` None: unbounded), in key order."""
    args: tuple[Any, ...] = (db, low, size) if high is None else (db, low, size, high)
    rows = await connection.fetch(_RANGES[high is not None, reverse], *args)
    return [(row[0], row[1]) for row in rows]


async def fetch_last(connection: Any, db: str, prefix: bytes) -> tuple[bytes, bytes] | None:
    """The entry with the greatest key starting with `prefix`, or None."""
    found = await fetch_range(connection, db, prefix, prefix_end(prefix), True, 1)
    return found[0] if found else None

"""The statements of a PostgreSQL store: point reads, range chunks and each write operation.

Each function takes an asyncpg connection (and runs on the store's I/O loop). Writes
run inside the writer's transaction, where `Update` and `Append` read with `FOR
UPDATE`: the function they carry sees the current value and no other writer changes
it before the commit. A key absent at that read cannot be locked, so a concurrent
insert of it (by another process on the same database) is caught by `ON CONFLICT DO
NOTHING` and the operation is done again on the value that won.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from roost.errors import ConfigurationError, InternalError, LeaseLost
from roost.storage._keys import SEQ_SIZE, pack_seq, prefix_end, unpack_seq
from roost.storage.ops import DATABASES, Append, Delete, Fence, Insert, Lease, Op, Put, Update
from roost.storage.postgres._schema import LEASES_TABLE
from roost.storage.postgres._schema import RECORDS_TABLE as _T

#: The longest key, in bytes: LMDB's limit, so that records move between the two stores.
MAX_KEY_SIZE = 511

GET = f"SELECT value FROM {_T} WHERE db = $1 AND key = $2"
_PUT = (f"INSERT INTO {_T} (db, key, value) VALUES ($1, $2, $3) "
        "ON CONFLICT (db, key) DO UPDATE SET value = EXCLUDED.value")
_INSERT = (f"INSERT INTO {_T} (db, key, value) VALUES ($1, $2, $3) "
           "ON CONFLICT (db, key) DO NOTHING RETURNING true")
_DELETE = f"DELETE FROM {_T} WHERE db = $1 AND key = $2 RETURNING true"
_LOCK = f"SELECT value FROM {_T} WHERE db = $1 AND key = $2 FOR UPDATE"
_REPLACE = f"UPDATE {_T} SET value = $3 WHERE db = $1 AND key = $2"
# The leases a batch's writes are fenced by, read first in its transaction, FOR SHARE: writes
# of the same run do not wait for each other, a takeover (FOR UPDATE) waits for them, and
# they wait for a takeover in progress.
_FENCES = (f"SELECT run_id, owner, epoch FROM {LEASES_TABLE} WHERE run_id = ANY($1::text[]) "
           "ORDER BY run_id FOR SHARE")

Leases = dict[str, tuple[str | None, int]]
"""The leases of the runs a batch writes, as its transaction sees them: run id -> (owner, epoch)."""
_LEASE = (f"INSERT INTO {LEASES_TABLE} (run_id, pipeline, owner, epoch, lease_until) "
          "VALUES ($1, $2, $3, 1, now() + make_interval(secs => $4))")
# A queued run's lease starts expired (any node may claim it at once), owned by no node. A
# run queued again (decided at a gate) may still have its old row: its epoch moves on, so
# a node that drove it before is fenced out.
_QUEUE = (f"INSERT INTO {LEASES_TABLE} (run_id, pipeline, owner, epoch, lease_until) "
          "VALUES ($1, $2, NULL, 0, now()) ON CONFLICT (run_id) DO UPDATE SET "
          f"pipeline = EXCLUDED.pipeline, owner = NULL, epoch = {LEASES_TABLE}.epoch + 1, "
          "lease_until = now(), parked = NULL")


def _range(*, bounded: bool, reverse: bool, lock: bool = False) -> str:
    """A chunk of `[low, high)` in key order: $1 db, $2 low, $3 limit, $4 high if bounded."""
    return (f"SELECT key, value FROM {_T} WHERE db = $1 AND key >= $2"
            + (" AND key < $4" if bounded else "")
            + f" ORDER BY key {'DESC' if reverse else 'ASC'} LIMIT $3"
            + (" FOR UPDATE" if lock else ""))


_RANGES = {(bounded, reverse): _range(bounded=bounded, reverse=reverse)
           for bounded in (False, True) for reverse in (False, True)}
_LAST_LOCKED = {bounded: _range(bounded=bounded, reverse=True, lock=True)
                for bounded in (False, True)}


async def fetch_range(connection: Any, db: str, low: bytes, high: bytes | None, reverse: bool,
                      size: int) -> list[tuple[bytes, bytes]]:
    """Up to `size` entries of `[low, high)` (`high` None: unbounded), in key order."""
    args: tuple[Any, ...] = (db, low, size) if high is None else (db, low, size, high)
    rows = await connection.fetch(_RANGES[high is not None, reverse], *args)
    return [(row[0], row[1]) for row in rows]


async def fetch_last(connection: Any, db: str, prefix: bytes, *,
                     lock: bool = False) -> tuple[bytes, bytes] | None:
    """The entry with the greatest key starting with `prefix`, or None."""
    high = prefix_end(prefix)
    if lock:
        args: tuple[Any, ...] = (db, prefix, 1) if high is None else (db, prefix, 1, high)
        rows = await connection.fetch(_LAST_LOCKED[high is not None], *args)
        return (rows[0][0], rows[0][1]) if rows else None
    found = await fetch_range(connection, db, prefix, high, True, 1)
    return found[0] if found else None


async def lock_leases(connection: Any, run_ids: set[str]) -> Leases:
    """Read (and share-lock) the leases of `run_ids`: one round trip for a batch's fences."""
    rows = await connection.fetch(_FENCES, sorted(run_ids))
    return {row[0]: (row[1], row[2]) for row in rows}


async def apply_all(connection: Any, ops: Sequence[Op], leases: Leases) -> list[Any]:
    """Apply `ops` in order in the current transaction; their results as `Store.commit` gives
    them. A run of consecutive `Put`s (a trace batch, a checkpoint's results) is one
    `executemany`: one round trip instead of one each. `Fence`s are checked against
    `leases` (`lock_leases` of every fenced run of the batch)."""
    results: list[Any] = []
    puts: list[Put] = []
    for op in ops:
        if isinstance(op, Put):
            puts.append(op)
            continue
        if isinstance(op, Fence):
            owner, epoch = leases.get(op.run_id, (None, None))
            if owner != op.owner or epoch != op.epoch:
                raise LeaseLost(op.run_id, op.owner, op.epoch, owner, epoch)
            results.append(None)
            continue
        await _put_all(connection, puts, results)
        results.append(await apply(connection, op))
        if isinstance(op, Lease):  # a write after it in the batch may be fenced by it
            leases[op.run_id] = (op.owner, 1) if op.owner is not None else (None, -1)
    await _put_all(connection, puts, results)
    return results


async def _put_all(connection: Any, puts: list[Put], results: list[Any]) -> None:
    """Write the `Put`s gathered so far (and empty the list)."""
    if len(puts) > 1:
        await connection.executemany(_PUT, [(put.db, put.key, put.value) for put in puts])
    elif puts:
        await connection.execute(_PUT, puts[0].db, puts[0].key, puts[0].value)
    results += [None] * len(puts)
    puts.clear()


async def apply(connection: Any, op: Op) -> Any:
    """Apply one operation in the current transaction; its result as `Store.commit` gives it."""
    if isinstance(op, Put):
        await connection.execute(_PUT, op.db, op.key, op.value)
        return None
    if isinstance(op, Insert):
        return await connection.fetchval(_INSERT, op.db, op.key, op.value) is not None
    if isinstance(op, Delete):
        return await connection.fetchval(_DELETE, op.db, op.key) is not None
    if isinstance(op, Update):
        return await _update(connection, op)
    if isinstance(op, Append):
        return await _append(connection, op)
    if isinstance(op, Lease):
        if op.owner is None:
            await connection.execute(_QUEUE, op.run_id, op.pipeline)
        else:
            await connection.execute(_LEASE, op.run_id, op.pipeline, op.owner, op.seconds)
        return None
    raise InternalError(f"the writer got {op!r}, which Store.commit should have refused")


async def _update(connection: Any, op: Update) -> bytes | None:
    while True:
        current = await connection.fetchval(_LOCK, op.db, op.key)
        changed = op.change(current)
        new, also = changed if isinstance(changed, tuple) else (changed, ())
        if current is not None:
            if new is None:
                await connection.execute(_DELETE, op.db, op.key)
            elif new != current:
                await connection.execute(_REPLACE, op.db, op.key, new)
        elif new is not None and await connection.fetchval(_INSERT, op.db, op.key, new) is None:
            continue  # another transaction inserted the key since the read: decide again
        for extra in also:
            await _apply_also(connection, op, extra)
        return new


async def _apply_also(connection: Any, update: Update, op: object) -> None:
    """Apply one operation an `Update`'s function asked for along with its value.

    `commit` could not check it (it did not exist yet), so it is checked here.
    """
    if not isinstance(op, Put | Delete) or op.db not in DATABASES or not (
            0 < len(op.key) <= MAX_KEY_SIZE):
        raise ConfigurationError(
            f"the update of {update.key!r} in {update.db!r} asked to also write {op!r}, which "
            f"is not a Put or Delete of a key of 1 to {MAX_KEY_SIZE} bytes in one of the "
            f"databases {', '.join(DATABASES)}; fix the update's function")
    if isinstance(op, Put):
        await connection.execute(_PUT, op.db, op.key, op.value)
    else:
        await connection.execute(_DELETE, op.db, op.key)


async def _append(connection: Any, op: Append) -> int:
    prefix = op.prefix
    while True:
        seq = 1
        last = await fetch_last(connection, op.db, prefix, lock=True)
        if last is not None:
            key = last[0]
            if len(key) != len(prefix) + SEQ_SIZE:
                raise ConfigurationError(
                    f"key {key!r} under prefix {prefix!r} in database {op.db!r} was not "
                    "written by Append; keep appended series under their own prefix")
            seq = unpack_seq(key[len(prefix):]) + 1
        if await connection.fetchval(_INSERT, op.db, prefix + pack_seq(seq), op.value(seq)) is None:
            continue  # another transaction appended this seq since the read: take the next
        if op.keep_last and seq > op.keep_last:
            await connection.execute(_DELETE, op.db, prefix + pack_seq(seq - op.keep_last))
        return seq

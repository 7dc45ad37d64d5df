"""A group commit's writes on PostgreSQL in a handful of statements, whatever their number.

One statement reads, `FOR UPDATE`, every key the batch's operations read (`Update`,
`Insert`, `Delete`), and another the last key of every series it appends to. The
operations then run in order, in Python, over those values and each other's writes
(`_Overlay`), and the final value of every key is written in at most three statements:
deletes, upserts, and inserts of keys the batch found absent. A key read as absent
cannot be locked: if another transaction inserted it meanwhile, that insert finds it
and the whole batch is done again (`WriteRaced`), as the writer does for a
serialization failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from roost.errors import ConfigurationError, InternalError, LeaseLost, StoreError
from roost.storage._keys import SEQ_SIZE, pack_seq, prefix_end, unpack_seq
from roost.storage.ops import DATABASES, Append, Delete, Fence, Insert, Lease, Op, Put, Update
from roost.storage.postgres._schema import LEASES_TABLE
from roost.storage.postgres._schema import RECORDS_TABLE as _T

#: The longest key, in bytes: LMDB's limit, so that records move between the two stores.
MAX_KEY_SIZE = 511
# Above every key under a prefix of 0xff bytes only (keys are at most MAX_KEY_SIZE long).
_TOP = b"\xff" * (MAX_KEY_SIZE + 1)

Leases = dict[str, tuple[str | None, int]]
"""The leases of the runs a batch writes, as its transaction sees them: run id -> (owner, epoch)."""
Key = tuple[str, bytes]

# The leases a batch's writes are fenced by, read first in its transaction, FOR SHARE: writes
# of the same run do not wait for each other, a takeover (FOR UPDATE) waits for them, and
# they wait for a takeover in progress.
_FENCES = (f"SELECT run_id, owner, epoch FROM {LEASES_TABLE} WHERE run_id = ANY($1::text[]) "
           "ORDER BY run_id FOR SHARE")
# Locked in key order, as every writer locks them: no deadlock between writers.
_READ = (f"SELECT t.db, t.key, t.value FROM {_T} AS t "
         "JOIN unnest($1::text[], $2::bytea[]) AS k(db, key) ON t.db = k.db AND t.key = k.key "
         "ORDER BY t.db, t.key FOR UPDATE OF t")
_LAST = (f"SELECT s.i, last.key FROM unnest($1::text[], $2::bytea[], $3::bytea[]) "
         "WITH ORDINALITY AS s(db, low, high, i) CROSS JOIN LATERAL ("
         f"SELECT key FROM {_T} AS t WHERE t.db = s.db AND t.key >= s.low AND t.key < s.high "
         "ORDER BY t.key DESC LIMIT 1 FOR UPDATE) AS last")
_UPSERT = (f"INSERT INTO {_T} (db, key, value) "
           "SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) "
           "ON CONFLICT (db, key) DO UPDATE SET value = EXCLUDED.value")
_INSERT = (f"INSERT INTO {_T} (db, key, value) "
           "SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) "
           "ON CONFLICT (db, key) DO NOTHING RETURNING true")
_DELETE = (f"DELETE FROM {_T} AS t USING unnest($1::text[], $2::bytea[]) AS k(db, key) "
           "WHERE t.db = k.db AND t.key = k.key")
# New runs' leases, held by their node; a run that has one already is refused.
_LEASE = (f"INSERT INTO {LEASES_TABLE} (run_id, pipeline, owner, epoch, lease_until) "
          "SELECT run_id, pipeline, owner, 1, now() + make_interval(secs => seconds) "
          "FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[]) "
          "AS l(run_id, pipeline, owner, seconds) "
          "ON CONFLICT (run_id) DO NOTHING RETURNING run_id")
# A queued run's lease starts expired (any node may claim it at once), owned by no node. A
# run queued again (decided at a gate) may still have its old row: its epoch moves on, so
# a node that drove it before is fenced out.
_QUEUE = (f"INSERT INTO {LEASES_TABLE} (run_id, pipeline, owner, epoch, lease_until) "
          "SELECT run_id, pipeline, NULL, 0, now() "
          "FROM unnest($1::text[], $2::text[]) AS l(run_id, pipeline) "
          "ON CONFLICT (run_id) DO UPDATE SET "
          f"pipeline = EXCLUDED.pipeline, owner = NULL, epoch = {LEASES_TABLE}.epoch + 1, "
          "lease_until = now(), parked = NULL")


class WriteRaced(Exception):
    """Another transaction inserted a key this batch read as absent: do the batch again."""


class OpFailed(Exception):
    """An operation of the batch's write number `index` failed with `error` (its function
    raised, its fence found the lease lost, the server refused its lease row)."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(f"write {index} failed: {error!r}")
        self.index = index
        self.error = error


async def lock_leases(connection: Any, run_ids: set[str]) -> Leases:
    """Read (and share-lock) the leases of `run_ids`: one round trip for a batch's fences."""
    rows = await connection.fetch(_FENCES, sorted(run_ids))
    return {row[0]: (row[1], row[2]) for row in rows}


async def apply_batch(connection: Any, writes: Sequence[Sequence[Op]],
                      leases: Leases) -> list[list[Any]]:
    """Apply each write's operations in order in the current transaction; their results as
    `Store.commit` gives them, per write. `Fence`s are checked against `leases`.

    Raises:
        OpFailed: an operation failed (nothing is written then; the writer drops that
            write and does the others again).
        WriteRaced: a key read as absent was inserted by another transaction meanwhile.
    """
    reads: set[Key] = set()
    series: set[Key] = set()
    for ops in writes:
        for op in ops:
            if isinstance(op, Update | Insert | Delete):
                reads.add((op.db, op.key))
            elif isinstance(op, Append):
                series.add((op.db, op.prefix))
    overlay = _Overlay(await _read(connection, reads), await _last_keys(connection, series))
    results: list[list[Any]] = []
    new_leases: list[tuple[int, Lease]] = []
    for index, ops in enumerate(writes):
        try:
            results.append([overlay.apply(op, leases) for op in ops])
        except Exception as error:
            raise OpFailed(index, error) from error
        new_leases += [(index, op) for op in ops if isinstance(op, Lease)]
    await overlay.flush(connection)
    await _write_leases(connection, new_leases)
    return results


async def _write_leases(connection: Any, leases: list[tuple[int, Lease]]) -> None:
    """The batch's new leases in two statements at most (those of new runs, of queued ones).

    Raises:
        OpFailed: a new run's lease exists already (its write is refused).
    """
    held = {lease.run_id: (index, lease) for index, lease in leases if lease.owner is not None}
    queued = {lease.run_id: lease for _, lease in leases if lease.owner is None}
    if held:
        rows = await connection.fetch(
            _LEASE, list(held), [lease.pipeline for _, lease in held.values()],
            [lease.owner for _, lease in held.values()],
            [lease.seconds for _, lease in held.values()])
        for run_id in held.keys() - {row[0] for row in rows}:
            raise OpFailed(held[run_id][0], StoreError(
                f"run {run_id!r} already has a lease: a run id is stored once; start the "
                "run under a new id"))
    if queued:
        await connection.execute(_QUEUE, list(queued),
                                 [lease.pipeline for lease in queued.values()])


async def _read(connection: Any, keys: set[Key]) -> dict[Key, bytes]:
    if not keys:
        return {}
    ordered = sorted(keys)
    rows = await connection.fetch(_READ, [db for db, _ in ordered], [key for _, key in ordered])
    return {(row[0], row[1]): row[2] for row in rows}


async def _last_keys(connection: Any, series: set[Key]) -> dict[Key, bytes]:
    """The last key of each appended series that has one, locked."""
    if not series:
        return {}
    ordered = sorted(series)
    rows = await connection.fetch(_LAST, [db for db, _ in ordered],
                                  [prefix for _, prefix in ordered],
                                  [prefix_end(prefix) or _TOP for _, prefix in ordered])
    return {ordered[row[0] - 1]: row[1] for row in rows}


class _Overlay:
    """The batch's keys as its operations leave them, over what the transaction read."""

    def __init__(self, stored: dict[Key, bytes], last_keys: dict[Key, bytes]) -> None:
        self._stored = stored
        self._last_keys = last_keys
        self._last_seqs: dict[Key, int] = {}  # of the series appended to in the batch
        self._written: dict[Key, bytes | None] = {}  # None: deleted
        self._fresh: set[Key] = set()  # written on the strength of their absence

    def _current(self, key: Key) -> bytes | None:
        return self._written[key] if key in self._written else self._stored.get(key)

    def _decide(self, key: Key, value: bytes | None) -> None:
        """Write `value`, decided on what `_current(key)` was."""
        if value is not None and key not in self._written and key not in self._stored:
            self._fresh.add(key)
        self._written[key] = value

    def apply(self, op: Op, leases: Leases) -> Any:
        if isinstance(op, Put):
            self._written[op.db, op.key] = op.value
            self._fresh.discard((op.db, op.key))  # a blind write: it may replace anything
            return None
        if isinstance(op, Fence):
            owner, epoch = leases.get(op.run_id, (None, None))
            if owner != op.owner or epoch != op.epoch:
                raise LeaseLost(op.run_id, op.owner, op.epoch, owner, epoch)
            return None
        if isinstance(op, Lease):  # a write after it in the batch may be fenced by it
            leases[op.run_id] = (op.owner, 1) if op.owner is not None else (None, -1)
            return None
        if isinstance(op, Insert):
            if self._current((op.db, op.key)) is not None:
                return False
            self._decide((op.db, op.key), op.value)
            return True
        if isinstance(op, Delete):
            existed = self._current((op.db, op.key)) is not None
            self._written[op.db, op.key] = None
            return existed
        if isinstance(op, Update):
            return self._update(op)
        if isinstance(op, Append):
            return self._append(op)
        raise InternalError(f"the writer got {op!r}, which Store.commit should have refused")

    def _update(self, op: Update) -> bytes | None:
        key = (op.db, op.key)
        changed = op.change(self._current(key))
        new, also = changed if isinstance(changed, tuple) else (changed, ())
        self._decide(key, new)
        for extra in also:
            if not isinstance(extra, Put | Delete) or extra.db not in DATABASES or not (
                    0 < len(extra.key) <= MAX_KEY_SIZE):
                raise ConfigurationError(
                    f"the update of {op.key!r} in {op.db!r} asked to also write {extra!r}, "
                    f"which is not a Put or Delete of a key of 1 to {MAX_KEY_SIZE} bytes in "
                    f"one of the databases {', '.join(DATABASES)}; fix the update's function")
            self.apply(extra, {})
        return new

    def _append(self, op: Append) -> int:
        series = (op.db, op.prefix)
        seq = self._last_seqs.get(series, self._stored_seq(series)) + 1
        self._last_seqs[series] = seq
        self._decide((op.db, op.prefix + pack_seq(seq)), op.value(seq))
        if op.keep_last and seq > op.keep_last:
            self._written[op.db, op.prefix + pack_seq(seq - op.keep_last)] = None
        return seq

    def _stored_seq(self, series: Key) -> int:
        """The number of the series' last stored entry (0: none)."""
        key = self._last_keys.get(series)
        if key is None:
            return 0
        db, prefix = series
        if len(key) != len(prefix) + SEQ_SIZE:
            raise ConfigurationError(
                f"key {key!r} under prefix {prefix!r} in database {db!r} was not written by "
                "Append; keep appended series under their own prefix")
        return unpack_seq(key[len(prefix):])

    async def flush(self, connection: Any) -> None:
        """Write every key's final value: three statements at most."""
        deletes: list[Key] = []
        upserts: list[tuple[str, bytes, bytes]] = []
        inserts: list[tuple[str, bytes, bytes]] = []
        for key, value in self._written.items():
            if value is None:
                deletes.append(key)
            elif key in self._fresh:
                inserts.append((*key, value))
            elif self._stored.get(key) != value:
                upserts.append((*key, value))
        if deletes:
            await connection.execute(_DELETE, [db for db, _ in deletes],
                                     [key for _, key in deletes])
        if upserts:
            await connection.execute(_UPSERT, *_columns(upserts))
        if inserts:
            inserted = await connection.fetch(_INSERT, *_columns(inserts))
            if len(inserted) != len(inserts):
                raise WriteRaced(f"{len(inserts) - len(inserted)} of {len(inserts)} keys read "
                                 "as absent were inserted by another transaction")


def _columns(rows: list[tuple[str, bytes, bytes]]) -> tuple[list[str], list[bytes], list[bytes]]:
    return [row[0] for row in rows], [row[1] for row in rows], [row[2] for row in rows]

"""The write operations a store commit is made of: `Put`, `Insert`, `Delete`, `Append`, `Update`,
and a cluster's run-lease conditions `Fence` and `Lease` (PostgreSQL only; no-ops on LMDB).

A commit is a sequence of operations applied in order, all or nothing, in the writer
thread's transaction. `Put`, `Insert` and `Delete` are single LMDB calls there.
`Append` and `Update` carry a function that the writer calls inside that
transaction, so the sequence number or read-modify-write they compute is
serialized with every other write: these functions must be quick and pure (the writer
may call them again if it retries the transaction), and may raise a `RoostError` to
refuse the write (that error reaches the caller unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

#: The named databases of a store, one per record kind.
DATABASES = ("checkpoints", "runs", "ledger", "gates", "traces", "results")


class Put(msgspec.Struct, frozen=True, gc=False):
    """Store `value` under `key` in database `db`, replacing any value there.

    Its result in `Store.commit` is None.
    """

    db: str
    key: bytes
    value: bytes


class Insert(msgspec.Struct, frozen=True, gc=False):
    """Store `value` under `key` in database `db` unless the key is already there.

    Its result in `Store.commit` is True if it stored the value, False if the key was
    there (its value is left as it was). A claim that needs no read-modify-write.
    """

    db: str
    key: bytes
    value: bytes


class Delete(msgspec.Struct, frozen=True, gc=False):
    """Remove `key` from database `db`.

    Its result in `Store.commit` is True if the key was there, False if it was not.
    """

    db: str
    key: bytes


class Append(msgspec.Struct, frozen=True):
    """Add the next entry of the series under `prefix`: key `prefix + 8-byte big-endian seq`.

    `seq` is one more than the last sequence number under `prefix` (1 for a new
    series); `value(seq)` gives the bytes to store. Every key under `prefix` in `db`
    must have been written by `Append`. Its result in `Store.commit` is `seq`.

    With `keep_last` > 0 the series is kept that long: the same transaction deletes
    the entry `keep_last` places back (older ones went the same way), so a series
    never grows past it and retention costs one delete per append.
    """

    db: str
    prefix: bytes
    value: Callable[[int], bytes]
    keep_last: int = 0


Changed = bytes | None | tuple[bytes | None, Sequence[Put | Delete]]
"""What an `Update`'s function returns: the new value (None: delete the key), or the pair
`(value, also)` to apply the `Put` and `Delete` operations `also` in the same transaction."""


class Update(msgspec.Struct, frozen=True):
    """Read-modify-write of one key: `change(current)` gives the new value, or None to delete.

    `current` is None when the key is absent. A change that must write more than its
    key, depending on what it read (an index entry that follows the value), returns
    the pair `(value, also)` instead: `also` is a sequence of `Put` and `Delete`
    operations applied right after the value, in the same transaction. Its result in
    `Store.commit` is the new value (without `also`).
    """

    db: str
    key: bytes
    change: Callable[[bytes | None], Changed]


class Fence(msgspec.Struct, frozen=True, gc=False):
    """Commit only while node `owner` holds the lease of run `run_id` at `epoch`.

    A cluster (`roost.cluster`) adds it to every write of a run it leases, so a node
    that lost the lease (paused past it, and the run taken over, which bumps the
    epoch) has its late writes refused with `LeaseLost` instead of overwriting the new
    owner's. On PostgreSQL the lease row is read first, `FOR SHARE`, so no takeover
    can commit in between; on LMDB (one process, no leases) it does nothing. Its
    result in `commit` is None.
    """

    run_id: str
    owner: str
    epoch: int


class Lease(msgspec.Struct, frozen=True, gc=False):
    """Give the new run `run_id` of `pipeline` its lease: to node `owner` at epoch 1 for
    `seconds`, or (owner None) to no node, as a queued run any node may claim (a run
    queued again keeps its row, its epoch moving on).

    Written with the run's record, so no run is stored without its lease. A no-op on
    LMDB. Its result in `commit` is None.
    """

    run_id: str
    pipeline: str
    owner: str | None
    seconds: float


Op = Put | Insert | Delete | Append | Update | Fence | Lease

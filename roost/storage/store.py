"""The durable store: one LMDB environment per system, written through one group-commit thread.

Usage, for a store that lives as long as a block::

    async with Store.open(".roost") as store:
        await store.commit([Put("runs", b"run-1", data)])
        data = await store.get("runs", b"run-1")

or, for one that an owner keeps open (an actor system), `store = await
Store.open(".roost")` and later `await store.close()`.

Writes go to the writer thread (see `roost.storage._writer`): nothing that can
fsync runs on the event loop. Point reads (`get`, `last`) run on the event loop:
LMDB reads are memory-mapped and never fsync. Scans run in worker threads, a chunk
per read transaction, and `read` runs a function over one consistent read transaction
in a worker thread (`read_on_loop`: on the loop, for a read as small as a point read).
`Store.open(path, readonly=True)` reads a store that no system has open, without a
writer thread. The store needs an asyncio event loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import lmdb
import msgspec

from roost._completion import to_completion
from roost._histogram import Histogram
from roost.errors import ConfigurationError, StoreCorrupt, StoreError
from roost.storage._environment import CORRUPTION, Environment, open_environment
from roost.storage._guard import MapGuard
from roost.storage._keys import SEQ_SIZE, key_range, seek_last
from roost.storage._snapshot import Snapshot
from roost.storage._threads import in_thread
from roost.storage._writer import Writer, WriteRequest
from roost.storage.ops import DATABASES, Append, Delete, Fence, Insert, Lease, Op, Put, Update

Durability = Literal["sync", "async"]
T = TypeVar("T")

# Records per read transaction in a scan: bounds how long a map resize waits.
_SCAN_CHUNK = 256


class StoreStatistics(msgspec.Struct, frozen=True, gc=False):
    """A snapshot of a store's write counters.

    Attributes:
        commits: LMDB write transactions committed (one per batch).
        writes: `commit` calls that succeeded.
        failed_writes: `commit` calls that failed.
        syncs: flushes to disk (`env.sync`): one per batch holding a durable write,
            plus the periodic and final flushes of non-durable ones. In `sync` mode
            LMDB also flushes the data pages inside every commit.
        map_size: the current size of the memory map, in bytes.
        map_grows: how many times the map has grown.
    """

    commits: int
    writes: int
    failed_writes: int
    syncs: int
    map_size: int
    map_grows: int


class Store:
    """An LMDB store folder: named databases, group-committed writes, reads on the loop.

    Create it with `Store.open`. Its databases are named in `DATABASES`
    (`checkpoints`, `runs`, `ledger`, `gates`, `traces`). One process owns a store
    folder at a time.
    """

    def __init__(self, path: str, writer: Writer | None, environment: Environment,
                 guard: MapGuard, loop: asyncio.AbstractEventLoop,
                 *, durability: Durability) -> None:
        self._path = path
        self._store_id = environment.header.store_id
        self._writer = writer  # None: opened read-only
        self._environment = environment
        self._env = env = environment.env
        self._dbs = environment.dbs
        self._guard = guard
        self._loop = loop
        self._durability: Durability = durability
        self._durable_default = durability == "sync"
        self._max_key_size: int = env.max_key_size()
        self._closed = False

    @classmethod
    def open(cls, path: str | os.PathLike[str] = ".roost", *, durability: Durability = "sync",
             map_size: int = 64 * 2**20, flush_interval: float = 1.0,
             create: bool = True, readonly: bool = False) -> StoreOpening:
        """Open (creating if needed) the store in folder `path`.

        Await the result for a store you close yourself, or use it with `async with`
        to close the store when the block ends.

        Args:
            path: the store folder; created with its parents if missing.
            durability: `"sync"` (a write is acknowledged once it is on disk) or
                `"async"` (acknowledged once committed, with no fsync: it survives a
                crash of the process, but a crash of the machine may lose the last
                `flush_interval` of writes and, as LMDB warns for its `MDB_NOSYNC`
                mode, may damage the database). Each `commit` may override it.
            map_size: the initial size of the memory map in bytes; it doubles on demand.
            flush_interval: seconds after which non-durable commits are flushed to disk.
            create: create the store if the folder holds none (False: refuse instead).
            readonly: open an existing store for reading only, while no system has it
                open (its lock is taken shared): no writer thread starts, and `commit`
                raises `StoreError`. For looking at the store of a stopped system.

        Raises:
            ConfigurationError: a bad `durability`, `map_size` or `flush_interval`.
            StoreUnavailable: the folder cannot be opened (a file, not writable, open
                elsewhere, or not a roost store).
        """
        return StoreOpening(partial(cls._open, os.fspath(path), durability=durability,
                                    map_size=map_size, flush_interval=flush_interval,
                                    create=create, readonly=readonly))

    @classmethod
    async def _open(cls, path: str, *, durability: Durability, map_size: int,
                    flush_interval: float, create: bool, readonly: bool) -> Store:
        if durability not in ("sync", "async"):
            raise ConfigurationError(f"durability={durability!r} is not a durability mode; "
                                     "use 'sync' or 'async'")
        if map_size <= 0:
            raise ConfigurationError(f"map_size={map_size!r} must be a positive number of bytes")
        if flush_interval <= 0:
            raise ConfigurationError(f"flush_interval={flush_interval!r} must be positive seconds")
        loop = asyncio.get_running_loop()
        opening = asyncio.ensure_future(in_thread(partial(
            open_environment, Path(path), nosync=durability == "async", map_size=map_size,
            create=create, readonly=readonly)))
        try:
            environment = await to_completion(opening)
        except asyncio.CancelledError:  # opened all the same: release the folder and its lock
            if not opening.cancelled() and opening.exception() is None:
                await to_completion(in_thread(opening.result().close))
            raise
        guard = MapGuard()
        writer = None
        if not readonly:
            writer = Writer(environment, guard, loop, path=path, flush_interval=flush_interval)
            writer.start()
        return cls(path, writer, environment, guard, loop, durability=durability)

    async def close(self) -> None:
        """Finish the queued writes, flush, stop the writer thread and release the folder.

        Waits for all of that, even if cancelled. Calling it again does nothing.

        Raises:
            StoreError: the final flush or close failed: non-durable writes may be lost.
        """
        if self._closed:
            return
        self._closed = True
        if self._writer is None:
            await to_completion(in_thread(self._close_readonly))
            return
        done: asyncio.Future[None] = self._loop.create_future()
        self._writer.stop(done)
        await to_completion(done)

    def _close_readonly(self) -> None:
        with self._guard.exclusive():
            self._guard.closed = True
            self._environment.close()

    @property
    def path(self) -> str:
        """The store folder, as given to `open`."""
        return self._path

    @property
    def store_id(self) -> str:
        """The id the store was given when it was created (kept in its header record)."""
        return self._store_id

    def on_failure(self, listener: Callable[[StoreError], None]) -> None:
        """Call `listener(error)` on the event loop if the store can no longer write.

        That happens only if its writer thread dies; every waiting and later write then
        fails with the same error. An actor system stops with it. (A read-only store
        never calls it.)
        """
        if self._writer is not None:
            self._writer.on_death(listener)

    @property
    def durability(self) -> Durability:
        """The store's default durability mode: `"sync"` or `"async"`."""
        return self._durability

    @property
    def readonly(self) -> bool:
        """Whether the store was opened read-only."""
        return self._writer is None

    @property
    def reads_in_memory(self) -> bool:
        """Yes: reads are of the memory map (`read_on_loop` suits small reads)."""
        return True

    @property
    def max_key_size(self) -> int:
        """The longest key LMDB accepts, in bytes."""
        return self._max_key_size

    def statistics(self) -> StoreStatistics:
        """A snapshot of the write counters (see `StoreStatistics`)."""
        writer = self._writer
        if writer is None:
            return StoreStatistics(commits=0, writes=0, failed_writes=0, syncs=0,
                                   map_size=self._env.info()["map_size"], map_grows=0)
        return StoreStatistics(commits=writer.commits, writes=writer.writes,
                               failed_writes=writer.failed_writes, syncs=writer.syncs,
                               map_size=writer.map_size, map_grows=writer.map_grows)

    def histograms(self) -> dict[str, Histogram]:
        """Snapshots of the writer's histograms: `commit_seconds` (each group commit, with
        its flush when durable) and `batch_writes` (writes per commit)."""
        writer = self._writer
        if writer is None:
            return {}
        return {"commit_seconds": writer.commit_seconds.copy(),
                "batch_writes": writer.batch_writes.copy()}

    # --- writes ---------------------------------------------------------------------------

    async def commit(self, ops: Sequence[Op], *, durable: bool | None = None) -> list[Any]:
        """Apply `ops` in order, all or nothing, and wait until they are committed.

        The write joins the writer thread's next batch: one transaction, and one flush
        for the whole batch when any write in it is durable.

        Args:
            ops: the operations (`Put`, `Insert`, `Delete`, `Append`, `Update`).
            durable: wait until the write is flushed to disk (True), or only committed
                (False); None uses the store's durability mode.

        Returns:
            One result per operation, in order (see each operation's docstring).

        Raises:
            ConfigurationError: an operation is not one, names an unknown database, or
                has a key LMDB cannot store (empty or longer than `max_key_size`).
            StoreError: the store is closed, or the write failed (the message names the
                store and operation; nothing of this commit was saved, or for a failed
                flush, saved but maybe not on disk).
            RoostError: an `Append` or `Update` function refused the write.

        If cancelled, the write may still be committed.
        """
        if self._closed:
            raise self._closed_error()
        if self._writer is None:
            raise StoreError(f"store at {self._path!r} was opened read-only; open it without "
                             "readonly=True to write")
        if not ops:
            return []
        for op in ops:
            self._check(op)
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        self._writer.submit(WriteRequest(
            tuple(ops), self._durable_default if durable is None else durable, future))
        return await future

    async def copy_to(self, folder: Path) -> None:
        """Write a consistent, compacted copy of the data file into `folder` (a worker thread).

        Writes go on meanwhile; the copy is the state of one read transaction.
        """
        def copy() -> None:
            self._enter()
            try:
                self._env.copy(str(folder), compact=True)
            except CORRUPTION as exc:
                raise StoreCorrupt(self._path, f"copying it failed ({exc})") from exc
            finally:
                self._guard.release_shared()

        await in_thread(copy)

    # --- reads ----------------------------------------------------------------------------

    async def get(self, db: str, key: bytes) -> bytes | None:
        """The value under `key` in database `db`, or None (a point read on the event loop).

        Raises:
            ConfigurationError: an unknown database or an invalid key.
            StoreError: the store is closed.
        """
        handle = self._handle(db)
        self._check_key(key)
        self._enter()
        try:
            with self._env.begin(db=handle) as txn:
                return txn.get(key)
        except CORRUPTION as exc:
            raise self._corrupt(db, exc) from exc
        finally:
            self._guard.release_shared()

    async def last(self, db: str, prefix: bytes) -> tuple[bytes, bytes] | None:
        """The entry with the greatest key starting with `prefix`, or None (one cursor seek).

        Runs on the event loop, like `get`.

        Raises:
            ConfigurationError: an unknown database.
            StoreError: the store is closed.
        """
        handle = self._handle(db)
        self._enter()
        try:
            with self._env.begin(db=handle) as txn:
                cursor = txn.cursor()
                return cursor.item() if seek_last(cursor, prefix) else None
        except CORRUPTION as exc:
            raise self._corrupt(db, exc) from exc
        finally:
            self._guard.release_shared()

    async def scan(self, db: str, *, prefix: bytes = b"", start: bytes | None = None,
                   stop: bytes | None = None, reverse: bool = False,
                   limit: int | None = None) -> AsyncIterator[tuple[bytes, bytes]]:
        """Yield `(key, value)` pairs in key order: keys under `prefix` within `[start, stop)`.

        Reads run in a worker thread, a chunk of entries per read transaction, so a
        scan is not a snapshot: entries written meanwhile may or may not appear.

        Args:
            db: the database name.
            prefix: only keys starting with it.
            start: only keys >= start.
            stop: only keys < stop.
            reverse: from the greatest key down.
            limit: at most this many entries.

        Raises:
            ConfigurationError: an unknown database or a negative limit.
            StoreError: the store is closed.
        """
        handle = self._handle(db)
        if limit is not None and limit < 0:
            raise ConfigurationError(f"limit={limit!r} must be >= 0 (or None for no limit)")
        low, high = key_range(prefix, start, stop)
        remaining = limit
        while remaining is None or remaining > 0:
            size = _SCAN_CHUNK if remaining is None else min(_SCAN_CHUNK, remaining)
            chunk = await in_thread(
                self._read_chunk, handle, low, high, reverse, size)
            for item in chunk:
                yield item
            if len(chunk) < size:
                return
            if remaining is not None:
                remaining -= size
            if reverse:
                high = chunk[-1][0]
            else:
                low = chunk[-1][0] + b"\x00"  # the smallest key after it

    async def read(self, function: Callable[[Snapshot], T]) -> T:
        """`function(snapshot)`, run in a worker thread over one consistent read transaction.

        For reads of several keys and ranges that must agree with each other, in one
        thread hop. `function` must be quick (a map resize waits for it) and must not
        keep the snapshot, or anything read from it, past its return except as copies.

        Raises:
            StoreError: the store is closed.
            StoreCorrupt: LMDB finds the pages read damaged.
        """
        return await in_thread(self._read, function)

    def read_on_loop(self, function: Callable[[Snapshot], T]) -> T:
        """`function(snapshot)`, run right here (on the event loop) over one read transaction.

        `read` without the thread hop, for reads as small as `get`'s: a few keys or a
        short range. LMDB reads never fsync, but they block the loop while they run, so
        `function` must bound what it reads (and hand a larger read to `read`). The same
        rules as `read` otherwise.

        Raises:
            StoreError: the store is closed.
            StoreCorrupt: LMDB finds the pages read damaged.
        """
        return self._read(function)

    def _read(self, function: Callable[[Snapshot], T]) -> T:
        self._enter()
        try:
            with self._env.begin() as txn:
                return function(Snapshot(txn, self._handle))
        except CORRUPTION as exc:
            raise StoreCorrupt(self._path, f"reading failed ({exc})") from exc
        finally:
            self._guard.release_shared()

    def _read_chunk(self, handle: lmdb._Database, low: bytes, high: bytes | None, reverse: bool,
                    size: int) -> list[tuple[bytes, bytes]]:
        """Up to `size` entries of `[low, high)` from one read transaction (a worker thread)."""
        items: list[tuple[bytes, bytes]] = []
        self._enter()
        try:
            with self._env.begin(db=handle) as txn:
                cursor = txn.cursor()
                if reverse:
                    found = (cursor.prev() if high is not None and cursor.set_range(high)
                             else cursor.last())
                    while found and len(items) < size and cursor.key() >= low:
                        items.append(cursor.item())
                        found = cursor.prev()
                else:
                    found = cursor.set_range(low)
                    while found and len(items) < size and (high is None or cursor.key() < high):
                        items.append(cursor.item())
                        found = cursor.next()
        except CORRUPTION as exc:
            raise self._corrupt(_name_of(self._dbs, handle), exc) from exc
        finally:
            self._guard.release_shared()
        return items

    # --- checks ---------------------------------------------------------------------------

    def _enter(self) -> None:
        if self._closed or not self._guard.acquire_shared():
            raise self._closed_error()

    def _corrupt(self, db: str, exc: BaseException) -> StoreCorrupt:
        return StoreCorrupt(self._path, f"reading database {db!r} failed ({exc})")

    def _closed_error(self) -> StoreError:
        return StoreError(f"store at {self._path!r} is closed (its system stopped, or "
                          "Store.close was called): use it inside `async with ActorSystem(...)`, "
                          "or open it again with Store.open")

    def _handle(self, db: str) -> lmdb._Database:
        try:
            return self._dbs[db]
        except KeyError:
            raise ConfigurationError(f"unknown database {db!r}; a store has "
                                     f"{', '.join(DATABASES)}") from None

    def _check_key(self, key: bytes) -> None:
        if not 0 < len(key) <= self._max_key_size:
            raise ConfigurationError(f"key {key[:64]!r} is {len(key)} bytes long; LMDB keys "
                                     f"must be 1 to {self._max_key_size} bytes")

    def _check(self, op: object) -> None:
        # Type tests, not `match`: this runs for every operation of every commit.
        if isinstance(op, _KEYED):
            if op.db not in self._dbs:
                self._handle(op.db)
            key = op.key
            if not 0 < len(key) <= self._max_key_size:
                self._check_key(key)
        elif isinstance(op, Append):
            self._handle(op.db)
            self._check_key(op.prefix + bytes(SEQ_SIZE))
        elif not isinstance(op, Fence | Lease):  # a cluster's lease conditions: no-ops here
            raise ConfigurationError(f"{op!r} is not a store operation; use Put, Insert, "
                                     "Delete, Append or Update")


_KEYED = (Put, Insert, Delete, Update)


def _name_of(dbs: dict[str, lmdb._Database], handle: lmdb._Database) -> str:
    return next((name for name, db in dbs.items() if db is handle), "?")


class StoreOpening:
    """What `Store.open` returns: await it for a `Store`, or enter it with `async with`."""

    __slots__ = ("_open", "_store")

    def __init__(self, open_store: Callable[[], Awaitable[Store]]) -> None:
        self._open = open_store
        self._store: Store | None = None

    def __await__(self) -> Generator[Any, None, Store]:
        return self._open().__await__()

    async def __aenter__(self) -> Store:
        self._store = await self._open()
        return self._store

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._store is not None:
            await self._store.close()

"""The PostgreSQL store: the LMDB store's interface over a database that several machines share.

Usage, as with `roost.storage.Store`::

    async with PostgresStore.open("postgresql://roost:secret@db:5432/roost") as store:
        await store.commit([Put("runs", b"run-1", data)])
        data = await store.get("runs", b"run-1")

or `ActorSystem(store="postgresql://...")`. roost creates and migrates its tables (see
`_schema`); a database of another application, a store made by a newer roost, an
unreachable server or refused credentials are refused at open with an error naming
the URL (never its password) and what to do.

Every connection lives on the store's own I/O thread and loop (see `_io`); writes are
group-committed there by one writer (see `_writer`), and reads go through a small
pool. Keys are limited to 511 bytes, as in LMDB, so a store's records fit either
kind. The store needs an asyncio event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from roost._completion import to_completion
from roost._histogram import Histogram
from roost.errors import (
    ConfigurationError,
    ExtraNotInstalled,
    StoreAccessDenied,
    StoreError,
    StoreUnavailable,
    StoreUnreachable,
)
from roost.storage._keys import SEQ_SIZE, key_range
from roost.storage._threads import in_thread
from roost.storage._writer import WriteRequest
from roost.storage.ops import DATABASES, Append, Delete, Fence, Insert, Lease, Op, Put, Update
from roost.storage.postgres import _sql
from roost.storage.postgres._batch import MAX_KEY_SIZE
from roost.storage.postgres._io import IoThread
from roost.storage.postgres._listen import Heard, Listener
from roost.storage.postgres._schema import prepare
from roost.storage.postgres._snapshot import PostgresSnapshot
from roost.storage.postgres._url import check_url, redact
from roost.storage.postgres._writer import PostgresWriter
from roost.storage.store import Durability, StoreStatistics

T = TypeVar("T")

# Records per round trip of a scan.
_SCAN_CHUNK = 256
_KEYED = (Put, Insert, Delete, Update)


class PostgresStore:
    """A PostgreSQL store: named databases, group-committed writes, snapshot reads.

    Create it with `PostgresStore.open`. It offers what `roost.storage.Store` offers
    (`commit`, `get`, `last`, `scan`, `read`, `read_on_loop`, `close`, `statistics`,
    `histograms`, `on_failure`), minus what only a folder has (`copy_to`: back a
    database up with `pg_dump`).
    """

    def __init__(self, url: str, io: IoThread, writer: PostgresWriter | None, pool: Any,
                 asyncpg: Any, store_id: str, loop: asyncio.AbstractEventLoop, *,
                 durability: Durability, timeout: float) -> None:
        self._url = url  # without its password
        self._io = io
        self._writer = writer  # None: opened read-only
        self._pool = pool
        self._asyncpg = asyncpg
        self._store_id = store_id
        self._loop = loop
        self._durability: Durability = durability
        self._durable_default = durability == "sync"
        self._timeout = timeout
        self._errors: tuple[type[BaseException], ...] = (
            OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
            asyncpg.exceptions.InternalClientError)
        self._closed = False
        self._fencer: Callable[[Sequence[Op]], list[Op]] | None = None
        # Snapshot reads running in other threads: `close` waits for them (they need the
        # I/O loop to finish), as LMDB's close waits for its read transactions.
        self._readers = 0
        self._readers_done = threading.Condition()

    @classmethod
    def open(cls, url: str, *, durability: Durability = "sync", create: bool = True,
             readonly: bool = False, timeout: float = 10.0, pool_size: int = 8,
             idle_transaction_timeout: float | None = None) -> PostgresStoreOpening:
        """Open (creating or migrating its tables if needed) the store at `url`.

        Await the result for a store you close yourself, or use it with `async with`.

        Args:
            url: `postgresql://USER:PASSWORD@HOST:PORT/DATABASE`; `?search_path=SCHEMA`
                keeps the store in a schema of its own.
            durability: `"sync"` (a write is acknowledged once the server has flushed it)
                or `"async"` (once committed, with `synchronous_commit = off`: a crash of
                the server may lose the last writes, never damage the database). Each
                `commit` may override it.
            create: create the store if the database holds none (False: refuse instead).
            readonly: no writer: `commit` raises `StoreError`.
            timeout: seconds to connect, and the most a blocking snapshot read waits.
            pool_size: connections for reads (the writer has one of its own).
            idle_transaction_timeout: seconds after which the server ends a session of
                this store left idle inside a transaction (the process stalled: paused,
                swapping), releasing its row locks; a cluster's node sets its lease, so
                a stalled node cannot keep others from taking its runs over.

        Raises:
            ConfigurationError: a bad URL or setting.
            ExtraNotInstalled: asyncpg is missing (install `roost[postgres]`).
            StoreUnreachable: the server cannot be reached.
            StoreAccessDenied: the server refused the user name or password.
            StoreForeign: the database holds another application's tables.
            StoreSchemaTooNew: the store was made by a newer roost.
            StoreUnavailable: no such database, or no store there and `create` is False.
        """
        async def opening() -> PostgresStore:
            return await cls._open(url, durability=durability, create=create,
                                   readonly=readonly, timeout=timeout, pool_size=pool_size,
                                   idle_transaction_timeout=idle_transaction_timeout)

        return PostgresStoreOpening(opening)

    @classmethod
    async def _open(cls, url: str, *, durability: Durability, create: bool, readonly: bool,
                    timeout: float, pool_size: int,
                    idle_transaction_timeout: float | None) -> PostgresStore:
        check_url(url)
        shown = redact(url)
        if durability not in ("sync", "async"):
            raise ConfigurationError(f"durability={durability!r} is not a durability mode; "
                                     "use 'sync' or 'async'")
        checked: list[tuple[str, object]] = [("timeout", timeout), ("pool_size", pool_size)]
        if idle_transaction_timeout is not None:
            checked.append(("idle_transaction_timeout", idle_transaction_timeout))
        for name, value in checked:
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(f"{name}={value!r} must be a positive number")
        settings = {} if idle_transaction_timeout is None else {
            "idle_in_transaction_session_timeout": str(max(1, round(idle_transaction_timeout
                                                                    * 1000)))}
        try:
            asyncpg = importlib.import_module("asyncpg")
        except ImportError:
            raise ExtraNotInstalled("the PostgreSQL store", "postgres", "asyncpg") from None
        loop = asyncio.get_running_loop()
        io = IoThread(f"roost-store-io:{shown}")
        io.start()
        starting = asyncio.ensure_future(io.call(cls._start(
            url, shown, asyncpg, io, loop, durability=durability,
            create=create and not readonly, readonly=readonly, timeout=timeout,
            pool_size=int(pool_size), settings=settings)))
        try:
            return await to_completion(starting)
        except asyncio.CancelledError:  # started all the same: leave no connection behind
            if not starting.cancelled() and starting.exception() is None:
                await to_completion(starting.result().close())
            else:
                await to_completion(in_thread(io.stop))
            raise
        except BaseException:
            await to_completion(in_thread(io.stop))
            raise

    @classmethod
    async def _start(cls, url: str, shown: str, asyncpg: Any, io: IoThread,
                     loop: asyncio.AbstractEventLoop, *, durability: Durability, create: bool,
                     readonly: bool, timeout: float, pool_size: int,
                     settings: dict[str, str]) -> PostgresStore:
        """On the I/O loop: connect, check or create the schema, start the pool and writer."""
        async def connect() -> Any:
            return await _connect(asyncpg, url, shown, timeout, settings)

        connection = await connect()
        try:
            store_id = await prepare(connection, shown, create=create)
            pool = await asyncpg.create_pool(url, min_size=1, max_size=pool_size,
                                             timeout=timeout, server_settings=settings,
                                             reset=_reset)
        except BaseException:
            connection.terminate()
            raise
        writer = None
        if readonly:
            await connection.close()
        else:
            writer = PostgresWriter(
                io.loop, loop, connect, connection, url=shown,
                # InternalClientError: a connection left mid-operation when its server went.
                connection_errors=(OSError, TimeoutError, asyncpg.InterfaceError,
                                   asyncpg.PostgresConnectionError,
                                   asyncpg.exceptions.OperatorInterventionError,
                                   asyncpg.exceptions.InternalClientError),
                retry_errors=(asyncpg.exceptions.TransactionRollbackError,),
                reconnect_for=timeout)
            writer.start()
        return cls(shown, io, writer, pool, asyncpg, store_id, loop, durability=durability,
                   timeout=timeout)

    async def close(self) -> None:
        """Finish the queued writes, close the connections and stop the I/O thread.

        Waits for all of that, even if cancelled. Calling it again does nothing.
        """
        with self._readers_done:
            if self._closed:
                return
            self._closed = True
        await to_completion(self._close())

    async def _close(self) -> None:
        if self._writer is not None:
            await self._writer.stop()
        await in_thread(self._wait_for_readers)
        await self._io.call(self._close_pool())
        await in_thread(self._io.stop)

    def _wait_for_readers(self) -> None:
        with self._readers_done:
            self._readers_done.wait_for(lambda: self._readers == 0, self._timeout)

    async def _close_pool(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), self._timeout)
        except Exception:  # reads still running, or the server is gone: drop the sockets
            self._pool.terminate()

    @property
    def path(self) -> str:
        """The store's URL without its password (what messages name it by)."""
        return self._url

    @property
    def store_id(self) -> str:
        """The id the store was given when its tables were created."""
        return self._store_id

    def on_failure(self, listener: Callable[[StoreError], None]) -> None:
        """Call `listener(error)` on the event loop if the store can no longer write (its
        writer task died; a lost connection fails only the writes in flight)."""
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
        """No: every read is a round trip to the server (`read_on_loop` would block the
        event loop for it; use `read`)."""
        return False

    @property
    def max_key_size(self) -> int:
        """The longest key the store accepts, in bytes (LMDB's limit)."""
        return MAX_KEY_SIZE

    def statistics(self) -> StoreStatistics:
        """A snapshot of the write counters (`syncs`: commits that waited for the server's
        flush; `map_size` and `map_grows` are LMDB's and stay 0)."""
        writer = self._writer
        if writer is None:
            return StoreStatistics(commits=0, writes=0, failed_writes=0, syncs=0, map_size=0,
                                   map_grows=0)
        return StoreStatistics(commits=writer.commits, writes=writer.writes,
                               failed_writes=writer.failed_writes, syncs=writer.syncs,
                               map_size=0, map_grows=0)

    def histograms(self) -> dict[str, Histogram]:
        """Snapshots of the writer's histograms: `commit_seconds` and `batch_writes`."""
        writer = self._writer
        if writer is None:
            return {}
        return {"commit_seconds": writer.commit_seconds.copy(),
                "batch_writes": writer.batch_writes.copy()}

    # --- writes ---------------------------------------------------------------------------

    async def commit(self, ops: Sequence[Op], *, durable: bool | None = None) -> list[Any]:
        """Apply `ops` in order, all or nothing, and wait until they are committed.

        The write joins the writer's next batch (one transaction). `durable=False`
        commits without waiting for the server's flush; None uses the store's mode.

        Returns:
            One result per operation, in order (see each operation's docstring).

        Raises:
            ConfigurationError: an operation is not one, names an unknown database, or
                has a key the store cannot hold (empty or longer than `max_key_size`).
            StoreError: the store is closed, or the write failed (the message says
                whether it may have been saved).
            RoostError: an `Append` or `Update` function refused the write.

        If cancelled, the write may still be committed.
        """
        if self._closed:
            raise self._closed_error()
        if self._writer is None:
            raise StoreError(f"store at {self._url!r} was opened read-only; open it without "
                             "readonly=True to write")
        if not ops:
            return []
        for op in ops:
            self._check(op)
        fences = () if self._fencer is None else self._fencer(ops)
        if fences:
            ops = [*fences, *ops]
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        self._writer.submit(WriteRequest(
            tuple(ops), self._durable_default if durable is None else durable, future))
        results = await future
        return results[len(fences):] if fences else results  # the caller's operations' only

    def fence_with(self, fencer: Callable[[Sequence[Op]], list[Op]] | None) -> None:
        """Have every `commit` start with the operations `fencer(ops)` gives (called in the
        committing task, so it may read its context): how a cluster makes each write of a
        run it leases conditional on its lease (`Fence`). None removes it."""
        self._fencer = fencer

    async def on_connection(self, function: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        """`await function(connection)` with a pooled asyncpg connection, on the store's I/O
        loop: for a cluster's statements on its own tables (nodes, leases).

        Raises:
            StoreError: the store is closed, or the server failed the statements.
        """
        async def run() -> T:
            async with self._pool.acquire(timeout=self._timeout) as connection:
                return await function(connection)

        return await self._call("running cluster statements", run())

    async def listen(self, channels: Sequence[str], heard: Heard) -> Listener:
        """LISTEN on `channels` over a connection of the pool held for it: each notification
        calls `heard(channel, payload)` on the caller's loop, until `unlisten`. A cluster's
        wake-up hint (new step tasks, answers); it never replaces polling.

        Raises:
            StoreError: the store is closed, or the server could not be reached.
        """
        listener = Listener(self._pool, channels, heard, asyncio.get_running_loop(),
                            self._timeout)
        try:
            await self._call("listening for notifications", listener.start())
        except BaseException:  # cancelled, maybe once it had its connection: give it back
            with contextlib.suppress(RuntimeError):
                self._io.submit(listener.close())
            raise
        return listener

    async def unlisten(self, listener: Listener) -> None:
        """Stop `listener` and give its connection back to the pool."""
        if not self._closed:
            await self._call("ending a LISTEN", listener.close())

    # --- reads ----------------------------------------------------------------------------

    async def get(self, db: str, key: bytes) -> bytes | None:
        """The value under `key` in database `db`, or None (one round trip).

        Raises:
            ConfigurationError: an unknown database or an invalid key.
            StoreError: the store is closed, or the server could not be read.
        """
        self._check_db(db)
        self._check_key(key)
        value: bytes | None = await self._call(f"reading {db!r}",
                                               self._pool.fetchval(_sql.GET, db, key))
        return value

    async def last(self, db: str, prefix: bytes) -> tuple[bytes, bytes] | None:
        """The entry with the greatest key starting with `prefix`, or None (one round trip)."""
        self._check_db(db)
        return await self._call(f"reading {db!r}", _sql.fetch_last(self._pool, db, prefix))

    async def scan(self, db: str, *, prefix: bytes = b"", start: bytes | None = None,
                   stop: bytes | None = None, reverse: bool = False,
                   limit: int | None = None) -> AsyncIterator[tuple[bytes, bytes]]:
        """Yield `(key, value)` pairs in key order: keys under `prefix` within `[start, stop)`.

        A chunk of entries per round trip, each its own statement: a scan is not a
        snapshot (use `read` for one).

        Raises:
            ConfigurationError: an unknown database or a negative limit.
            StoreError: the store is closed, or the server could not be read.
        """
        self._check_db(db)
        if limit is not None and limit < 0:
            raise ConfigurationError(f"limit={limit!r} must be >= 0 (or None for no limit)")
        low, high = key_range(prefix, start, stop)
        remaining = limit
        while remaining is None or remaining > 0:
            size = _SCAN_CHUNK if remaining is None else min(_SCAN_CHUNK, remaining)
            chunk = await self._call(f"scanning {db!r}",
                                     _sql.fetch_range(self._pool, db, low, high, reverse, size))
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

    async def read(self, function: Callable[[PostgresSnapshot], T]) -> T:
        """`function(snapshot)`, run in a worker thread over one `REPEATABLE READ` transaction.

        Each read of the snapshot is a round trip made from the I/O thread, so the
        event loop stays free. `function` must not keep the snapshot past its return.

        Raises:
            StoreError: the store is closed, or the server could not be read.
        """
        return await in_thread(self._read, function)

    def read_on_loop(self, function: Callable[[PostgresSnapshot], T]) -> T:
        """`read` without the worker thread: `function(snapshot)` runs right here.

        Unlike LMDB's memory-mapped reads, every read of this snapshot is a round trip
        to the server, and the event loop is blocked while it waits (at most `timeout`
        seconds each). It is here so that code written for the LMDB store's
        `read_on_loop` (the trace store's small reads) works unchanged; prefer `read`.

        Raises:
            StoreError: the store is closed, or the server could not be read in time.
        """
        return self._read(function)

    def _read(self, function: Callable[[PostgresSnapshot], T]) -> T:
        with self._readers_done:
            if self._closed:
                raise self._closed_error()
            self._readers += 1
        try:
            connection = self._wait(self._begin_read())
            try:
                return function(PostgresSnapshot(connection, self._wait, self._check_db))
            finally:
                self._wait(self._end_read(connection))
        finally:
            with self._readers_done:
                self._readers -= 1
                self._readers_done.notify_all()

    async def _begin_read(self) -> Any:
        connection = await self._pool.acquire(timeout=self._timeout)
        try:
            await connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        except BaseException:
            await self._pool.release(connection)
            raise
        return connection

    async def _end_read(self, connection: Any) -> None:
        try:
            await connection.execute("ROLLBACK")
        finally:
            await self._pool.release(connection)

    async def _call(self, what: str, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a read on the I/O loop and await it; server failures become `StoreError`."""
        if self._closed:
            coroutine.close()
            raise self._closed_error()
        try:
            return await self._io.call(coroutine)
        except self._errors as error:
            raise self._read_failed(what, error) from error

    def _wait(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a read on the I/O loop and block this thread for it (a snapshot's reads)."""
        try:
            return self._io.wait(coroutine, self._timeout)
        except self._errors as error:
            raise self._read_failed("reading a snapshot", error) from error

    def _read_failed(self, what: str, error: BaseException) -> StoreError:
        if self._closed:
            return self._closed_error()
        return StoreError(f"store at {self._url!r}: {what} failed ({type(error).__name__}: "
                          f"{error}); check that the PostgreSQL server is up, then retry")

    # --- checks ---------------------------------------------------------------------------

    def _closed_error(self) -> StoreError:
        return StoreError(f"store at {self._url!r} is closed (its system stopped, or "
                          "close() was called): use it inside `async with ActorSystem(...)`, or "
                          "open it again with PostgresStore.open")

    def _check_db(self, db: str) -> None:
        if db not in DATABASES:
            raise ConfigurationError(f"unknown database {db!r}; a store has "
                                     f"{', '.join(DATABASES)}")

    def _check_key(self, key: bytes) -> None:
        if not 0 < len(key) <= MAX_KEY_SIZE:
            raise ConfigurationError(f"key {key[:64]!r} is {len(key)} bytes long; store keys "
                                     f"must be 1 to {MAX_KEY_SIZE} bytes")

    def _check(self, op: object) -> None:
        if isinstance(op, _KEYED):
            self._check_db(op.db)
            self._check_key(op.key)
        elif isinstance(op, Append):
            self._check_db(op.db)
            self._check_key(op.prefix + bytes(SEQ_SIZE))
        elif not isinstance(op, Fence | Lease):
            raise ConfigurationError(f"{op!r} is not a store operation; use Put, Insert, "
                                     "Delete, Append or Update")


async def _reset(connection: Any) -> None:
    """A pooled connection on its way back to the pool. Whoever takes one ends what they
    began (a snapshot's transaction, a listener's LISTENs), so only a transaction left
    open by a cancelled read is rolled back here: asyncpg's full reset costs a round trip
    on every point read."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


async def _connect(asyncpg: Any, url: str, shown: str, timeout: float,
                   settings: dict[str, str]) -> Any:
    """One connection to `url`; the errors of a bad URL, server or login, named clearly."""
    try:
        return await asyncpg.connect(url, timeout=timeout, server_settings=settings)
    except asyncpg.InvalidAuthorizationSpecificationError as error:  # includes a bad password
        raise StoreAccessDenied(shown, str(error)) from None
    except asyncpg.InvalidCatalogNameError as error:
        raise StoreUnavailable(shown, f"{error}; create the database (createdb NAME) or fix "
                                      "its name in the URL") from None
    except (OSError, TimeoutError, asyncpg.PostgresConnectionError,
            asyncpg.exceptions.CannotConnectNowError) as error:
        raise StoreUnreachable(shown, f"{type(error).__name__}: {error}") from None
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise StoreUnavailable(shown, f"{type(error).__name__}: {error}") from None
    except ValueError as error:  # asyncpg's parsing of the URL
        raise ConfigurationError(f"store URL {shown!r} is not usable ({error})") from None


class PostgresStoreOpening:
    """What `PostgresStore.open` returns: await it for a store, or enter it with `async with`."""

    __slots__ = ("_open", "_store")

    def __init__(self, open_store: Callable[[], Coroutine[Any, Any, PostgresStore]]) -> None:
        self._open = open_store
        self._store: PostgresStore | None = None

    def __await__(self) -> Generator[Any, None, PostgresStore]:
        return self._open().__await__()

    async def __aenter__(self) -> PostgresStore:
        self._store = await self._open()
        return self._store

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._store is not None:
            await self._store.close()
